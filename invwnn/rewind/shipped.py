"""The checkpoints shipped inside the package (``invwnn/rewind/predictors/``), by short name."""
from __future__ import annotations

from pathlib import Path

from invwnn.errors import InputError

# short name -> file. default-k15: the paper's window (invwnn); default-k5: invwnn+'s; the rest are the
# bench's K = 5 rewinder rows (docs/predictor.md says how each was trained); meta: `invwnn meta-train`'s.
SHIPPED = {"default-k15": "default_predictor.pt", "default-k5": "default_predictor_k5.pt",
           "episodes": "episode_predictor_k5.pt", "episodes-context": "episode_context_predictor_k5.pt",
           "twins": "twin_predictor_k5.pt", "twins48": "twins48_predictor_k5.pt",
           "runs500": "runs500_predictor_k5.pt", "runs500-episodes": "runs500_episode_predictor_k5.pt",
           "meta": "meta_rewinder_k5.pt"}
DEFAULT = {15: "default-k15", 5: "default-k5"}  # window K -> the learned rewinder used without --predictor


def shipped_path(name: str) -> Path:
    """The file of the shipped checkpoint ``name`` (a key of :data:`SHIPPED`)."""
    if name not in SHIPPED:
        raise InputError(f"no shipped checkpoint {name!r}; shipped: {', '.join(SHIPPED)}")
    return Path(__file__).with_name("predictors") / SHIPPED[name]
