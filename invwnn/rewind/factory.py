"""One factory for every rewinder, and the one reader of every checkpoint a rewinder comes from."""
from __future__ import annotations

import json
from pathlib import Path

from invwnn.errors import InputError
from invwnn.rewind import meta, predictor
from invwnn.rewind.predictor import CheckpointError, default_checkpoint, load_learned
from invwnn.rewind.rewinders import LinearRewinder, NoRewinder, ResetRewinder, Rewinder
from invwnn.rewind.shipped import SHIPPED, shipped_path

# learned: a trained past-weight predictor; meta: a rewinder of `invwnn meta-train`; linear: a least-squares
# line extrapolated `horizon` snapshots back; the bench's controls: reset (back to each window's first
# value: undoes the forget fine-tuning, "repair only") and none (keep the fine-tuned weights).
REWINDERS = ("learned", "meta", "linear", "reset", "none")
USER_REWINDERS = ("learned", "meta", "linear")  # what `invwnn apply --rewinder` offers


def checkpoint_kind(path: str | Path) -> str:
    """"learned" (a predictor checkpoint) or "meta" (a meta rewinder's), read from the file."""
    payload = predictor.load_payload(path)
    if isinstance(payload, dict) and payload.get("kind") == predictor.CHECKPOINT_KIND:
        return "learned"
    if isinstance(payload, dict) and payload.get("format") == meta.FORMAT:
        return "meta"
    raise CheckpointError(f"{path} is not an invwnn predictor checkpoint nor a meta rewinder's")


def make_rewinder(kind: str, config, device: str = "cpu", checkpoint: str | Path | None = None) -> Rewinder:
    """The rewinder ``kind`` (:data:`REWINDERS`) for an invwnn / invwnn+ ``config`` (its
    ``snapshots`` K, ``every``, ``horizon``, ``optimizer`` and ``lr``). ``checkpoint``: a file or a
    :data:`SHIPPED` name (default: the shipped predictor of window K, or meta rewinder); its content
    decides between learned and meta ("meta" refuses a predictor). Its window K must be the loop's
    snapshots and its snapshot spacing the loop's ``every``. Bad input: one-line :class:`InputError`."""
    if kind not in REWINDERS:
        raise InputError(f"unknown rewinder {kind!r}; valid: {', '.join(REWINDERS)}")
    if kind in ("linear", "reset", "none"):
        if checkpoint is not None:
            raise InputError(f"the {kind} rewinder reads no checkpoint (--predictor is for learned and meta)")
        return {"linear": lambda: LinearRewinder(config.horizon), "reset": ResetRewinder, "none": NoRewinder}[kind]()
    try:
        return _learned(kind, config, device, checkpoint)
    except CheckpointError as err:
        if checkpoint is None:
            raise
        raise CheckpointError(f"--predictor: {err}") from None


def _learned(kind: str, config, device: str, checkpoint: str | Path | None) -> Rewinder:
    """:func:`make_rewinder` of a learned or meta ``kind``."""
    if checkpoint is None:
        path = shipped_path("meta") if kind == "meta" else default_checkpoint(config.snapshots)
    else:
        path = shipped_path(str(checkpoint)) if str(checkpoint) in SHIPPED else Path(checkpoint)
        found = checkpoint_kind(path)
        if kind == "meta" and found != "meta":
            raise CheckpointError(f"{path} is a predictor checkpoint, not a meta rewinder's (--rewinder meta)")
        kind = found
    if kind == "meta":
        net, _ = meta.load(path, device)
        rewinder = meta.MetaRewinder(net, str(path), config.horizon)
    else:
        rewinder = load_learned(path, device, config.every, config.horizon, (config.optimizer, config.lr))
    if rewinder.k != config.snapshots:
        raise CheckpointError(f"--snapshots {config.snapshots} does not match the predictor's window "
                              f"K = {rewinder.k} ({path})")
    return rewinder


def inspect(path: str | Path, as_json: bool = False) -> str:
    """What ``invwnn inspect`` prints for any checkpoint the project ships or writes: the text
    description, or (``as_json``) its record with each weight tensor's shape."""
    kind = checkpoint_kind(path)
    if not as_json:
        return predictor.describe_checkpoint(path) if kind == "learned" else meta.describe_checkpoint(path)
    if kind == "learned":
        record = predictor.read_checkpoint(path)
        record["model_config"] = record["model_config"].to_dict()
    else:
        record = meta.read(path)
    record["state_dict"] = {k: list(v.shape) for k, v in record["state_dict"].items()}
    return json.dumps(record, indent=2)


__all__ = ["REWINDERS", "USER_REWINDERS", "checkpoint_kind", "make_rewinder", "inspect"]
