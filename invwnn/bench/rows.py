"""Every bench row in one table: name -> the registry method it runs, its rewinder (kind and shipped
checkpoint, or None), the settings it holds fixed, its search space, and which lists it is on.

Row names key the committed tuning records (``tuned/*.json``) and the documented tables, so they stay
as they are; no code reads anything out of a name. To add a row, add one :class:`Row` here (and search
it: ``invwnn bench --phase tune --methods NAME``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invwnn.errors import InputError
from invwnn.unlearn.methods import REGISTRY

Param = tuple  # ("log", lo, hi) | ("uniform", lo, hi) | ("choice", [values])


@dataclass(frozen=True)
class Row:
    """``method``: a registry name; ``rewinder``: (kind, shipped checkpoint name or None) for the
    rewinding methods (a learned kind without a name reads the shipped predictor of its window K);
    ``fixed``: config fields held in every run of the row (every trial of its search included);
    ``space``: the searched fields; ``bench``: on the equal-forgetting bench's ``all``; ``panel``: on
    the as-run panel's ``all``."""

    method: str
    rewinder: tuple[str, str | None] | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Param] = field(default_factory=dict)
    bench: bool = True
    panel: bool = False


_INVWNN = {"lr": ("log", 1e-5, 1e-3), "iterations": ("choice", [3, 5, 10, 20]), "every": ("choice", [1, 2])}
_PLUS = {"lr": ("log", 3e-4, 5e-3), "iterations": ("choice", [6, 12, 24]),
         "repair_steps": ("choice", [2, 4, 8, 16]), "repair_lr": ("log", 3e-4, 3e-3),
         "batch_size": ("choice", [64, 128])}
# The rewind's length in snapshot intervals: the line's horizon, and the learned rewinder's stretch
# (horizon / its trained U), so the learned and linear rows get the same one knob.
_HORIZON = {"horizon": ("uniform", 0.5, 4.0)}
_PLUS_H, _INVWNN_H = {**_PLUS, **_HORIZON}, {**_INVWNN, **_HORIZON}
_EPOCHS = ("choice", [2.0, 5.0, 10.0])

ROWS: dict[str, Row] = {
    "invwnn+": Row("invwnn+", ("learned", None), space=_PLUS_H, panel=True),
    # the ablations and controls: a least-squares line (its horizon tuned); each window's first value
    # written back (the forget fine-tuning undone, only the repair steps remain); the fine-tuned
    # weights kept (no rewind)
    "invwnn+-linear": Row("invwnn+", ("linear", None), space=_PLUS_H, panel=True),
    "invwnn+-reset": Row("invwnn+", ("reset", None), space=_PLUS),
    "invwnn+-none": Row("invwnn+", ("none", None), space=_PLUS),
    # other K = 5 predictors: trained on fine-tuning episodes' first windows (`trajgen
    # episodes`), with the step and layer context inputs, on counterfactual twins (`trajgen twins`), on
    # the 500-run collection, that one fine-tuned on the episodes, and the twins' recipe on 48 twins
    "invwnn+-episodes": Row("invwnn+", ("learned", "episodes"), space=_PLUS_H),
    "invwnn+-episodes-context": Row("invwnn+", ("learned", "episodes-context"), space=_PLUS_H),
    "invwnn+-twins": Row("invwnn+", ("learned", "twins"), space=_PLUS_H),
    # the 500-run predictor was trained on snapshots 4 steps apart; the loop refuses another spacing
    "invwnn+-runs500": Row("invwnn+", ("learned", "runs500"), {"every": 4}, _PLUS_H),
    "invwnn+-runs500-episodes": Row("invwnn+", ("learned", "runs500-episodes"), space=_PLUS_H),
    "invwnn+-twins48": Row("invwnn+", ("learned", "twins48"), space=_PLUS_H),
    # the line in -runs500's loop (isolates that predictor from its spacing), and with the spacing searched
    "invwnn+-linear-every4": Row("invwnn+", ("linear", None), {"every": 4}, _PLUS_H),
    "invwnn+-linear-spacing": Row("invwnn+", ("linear", None), space={**_PLUS_H, "every": ("choice", [1, 2, 4])}),
    # meta-trained on the unlearning objective (`invwnn meta-train`)
    "invwnn+-meta": Row("invwnn+", ("meta", "meta"), space=_PLUS_H, panel=True),
    "invwnn": Row("invwnn", ("learned", None), space=_INVWNN, panel=True),
    "invwnn-linear": Row("invwnn", ("linear", None), space=_INVWNN_H, panel=True),
    "invwnn-reset": Row("invwnn", ("reset", None), space=_INVWNN),
    "invwnn-none": Row("invwnn", ("none", None), space=_INVWNN),
    "invwnn-meta": Row("invwnn", ("meta", "meta"), {"snapshots": 5}, _INVWNN_H, bench=False, panel=True),
    # the line in the meta rewinder's window of 5 snapshots: its control on the panel
    "invwnn-linear-k5": Row("invwnn", ("linear", None), {"snapshots": 5}, _INVWNN_H, bench=False, panel=True),
    # the forget-only study's K = 5 predictors in invwnn's loop (its window set to theirs)
    "invwnn-episodes": Row("invwnn", ("learned", "episodes"), {"snapshots": 5}, _INVWNN_H, bench=False),
    "invwnn-twins": Row("invwnn", ("learned", "twins"), {"snapshots": 5}, _INVWNN_H, bench=False),
    # invwnn+ as it runs on forget data only, its repair on the forget images' neighbours although
    # retain data is at hand (the guard watches it): on the panel beside the forget-only invwnn
    "invwnn+-neighbours": Row("invwnn+", ("learned", None), {"repair_on": "neighbours"}, bench=False, panel=True),
    "finetune": Row("finetune", space={"lr": ("log", 1e-3, 1e-1), "epochs": _EPOCHS}, panel=True),
    "neggrad": Row("neggrad", space={"lr": ("log", 1e-4, 1e-2), "epochs": ("choice", [1.0, 2.0, 5.0])}, panel=True),
    "neggrad+": Row("neggrad+", space={"lr": ("log", 1e-3, 3e-2), "alpha": ("uniform", 0.8, 0.99), "epochs": _EPOCHS},
                    panel=True),
    "random-label": Row("random-label", space={"lr": ("log", 1e-3, 3e-2), "epochs": ("choice", [1.0, 2.0, 5.0])},
                        panel=True),
    "salun": Row("salun", space={"lr": ("log", 3e-4, 1e-2), "sparsity": ("uniform", 0.3, 0.9), "epochs": _EPOCHS},
                 panel=True),
    "boundary-shrink": Row("boundary-shrink", space={"lr": ("log", 1e-6, 1e-3), "epsilon": ("uniform", 0.03, 0.3),
                                                     "epochs": _EPOCHS}, panel=True),
    "task-vector": Row("task-vector", space={"alpha": ("uniform", 0.2, 3.0), "lr": ("log", 1e-3, 3e-2),
                                             "epochs": _EPOCHS}, panel=True),
    "scrub": Row("scrub", space={"lr": ("log", 1e-4, 2e-3), "msteps": ("choice", [1, 2, 3]),
                                 "epochs": ("choice", [2.0, 3.0, 5.0])}, panel=True),
    "fisher": Row("fisher", space={"alpha": ("log", 1e-8, 1e-5)}, panel=True),
    "unsir": Row("unsir", space={"impair_lr": ("log", 3e-3, 5e-2), "repair_lr": ("log", 3e-3, 3e-2),
                                 "noise_steps": ("choice", [20, 40])}, panel=True),
    "mnemonic": Row("mnemonic", space={"l1": ("log", 1e-4, 1e-2), "l2": ("log", 1.0, 100.0)}, panel=True),
    # the 2026 yardstick's methods
    "ssd": Row("ssd", space={"alpha": ("log", 1.0, 100.0), "dampening": ("log", 0.1, 10.0)}, panel=True),
    "l1-sparse": Row("l1-sparse", space={"lr": ("log", 1e-3, 1e-1), "l1": ("log", 1e-5, 1e-3), "epochs": _EPOCHS},
                     panel=True),
    "regun": Row("regun", space={"lr": ("log", 1e-3, 3e-2), "retain_weight": ("uniform", 0.3, 0.95),
                                 "epochs": _EPOCHS}, panel=True),
    "amun": Row("amun", space={"lr": ("log", 1e-3, 3e-2), "epochs": ("choice", [1.0, 2.0, 5.0, 10.0])}, panel=True),
}
# the equal-forgetting bench's `all`, and the panel's: its registry rows first, then its rewinder rows
BENCH = tuple(name for name, row in ROWS.items() if row.bench)
PANEL = (*(n for n in BENCH if ROWS[n].panel and ROWS[n].method == n),
         *(n for n in ROWS if ROWS[n].panel and ROWS[n].method != n))

# The forget-only protocol's rows (invwnn.bench.forget_only; no retain data, so invwnn+ repairs on the
# forget images' neighbours), each with its one knob and the grid it is chosen from on validation: the
# rewind's length for the rewinders, five values around the default for the field's forget-only methods.
_HORIZONS = (1.5, 3.0, 6.0, 12.0, 24.0)
FORGET_ONLY: dict[str, tuple[str, tuple[float, ...]]] = {
    **{name: ("horizon", _HORIZONS) for name in ("invwnn", "invwnn-linear", "invwnn-episodes", "invwnn-twins",
                                                  "invwnn+", "invwnn+-linear")},
    "neggrad": ("lr", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)), "task-vector": ("alpha", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "boundary-shrink": ("lr", (1e-6, 3e-6, 1e-5, 3e-5, 1e-4))}


def names(spec: str, valid: tuple[str, ...] = BENCH) -> list[str]:
    """``"all"`` (``valid``) or a comma-separated list of row names, checked against :data:`ROWS`."""
    if spec.strip() == "all":
        return list(valid)
    out = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in out if n not in ROWS]
    if bad or not out:
        raise InputError(f"unknown method {bad[0] if bad else spec!r}; valid: all, {', '.join(ROWS)}")
    return out


def config(name: str, overrides: dict | None = None):
    """Row ``name``'s method config: library defaults, the row's fixed settings, then ``overrides``."""
    return REGISTRY[ROWS[name].method].config.from_dict({**ROWS[name].fixed, **(overrides or {})})


def defaults(name: str) -> dict:
    """Row ``name``'s library defaults of its searched fields, written out (so a record stays true if a
    default changes later), with its fixed settings."""
    base = REGISTRY[ROWS[name].method].config()
    return {**{k: getattr(base, k) for k in ROWS[name].space}, **ROWS[name].fixed}


def predictor_file(name: str, method_config, predictors: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint row ``name``'s rewinder reads with ``method_config`` (None: it reads none): its
    shipped checkpoint; for a learned rewinder without one, the first of ``predictors`` whose window K
    is the config's snapshots, else the shipped predictor of that window."""
    from invwnn.rewind import shipped_path
    from invwnn.rewind.predictor import CheckpointError, default_checkpoint, read_checkpoint
    kind, checkpoint = ROWS[name].rewinder or (None, None)
    if checkpoint is not None:
        return shipped_path(checkpoint)
    if kind != "learned":
        return None
    for path in predictors:
        try:
            if read_checkpoint(path)["model_config"].k == method_config.snapshots:
                return Path(path)
        except CheckpointError as err:
            raise InputError(f"--predictor: {err}") from None
    return default_checkpoint(method_config.snapshots)


def make_rewinder(name: str, method_config, device: str = "cpu", predictors: tuple[str, ...] = (),
                  amp: bool = False) -> tuple:
    """(rewinder, its description) of row ``name`` for ``method_config`` (predicting in float32 under
    ``amp``), or (None, None) for a row without one; a description naming a checkpoint carries its
    sha256, as the file may change."""
    from invwnn.rewind import FullPrecision, make_rewinder as factory
    if ROWS[name].rewinder is None:
        return None, None
    kind = ROWS[name].rewinder[0]
    path = predictor_file(name, method_config, predictors)
    rewinder = factory(kind, method_config, device, path)
    desc = dict(rewinder.describe()) if hasattr(rewinder, "describe") else {"rewinder": kind}
    if "predictor" in desc:
        desc["sha256"] = hashlib.sha256(Path(desc["predictor"]).read_bytes()).hexdigest()
    return (FullPrecision(rewinder, device) if amp else rewinder), desc


def fingerprint(name: str, overrides: dict, predictors: tuple[str, ...] = ()) -> str:
    """Hash of row ``name``'s settings and of the predictor file it reads (if any; ``predictors`` as
    for :func:`predictor_file`): a new choice or a retrained predictor is a new unit."""
    path = predictor_file(name, config(name, overrides), predictors) if ROWS[name].rewinder else None
    text = json.dumps(overrides, sort_keys=True) + (hashlib.sha256(path.read_bytes()).hexdigest() if path else "")
    return hashlib.sha256(text.encode()).hexdigest()[:10]
