"""Recompute a checkpoint's held-out evaluation from a store (``invwnn evaluate``).

The checkpoint records everything the evaluation depends on: the held-out runs, the sampling seed
and windows per kind, and (format 2) the training runs whose windows fitted the damped line. A
store holding those runs, made by the same ``trajgen collect`` flags, reproduces the record; the
store may hold only them (runs are a pure function of the collection seed and their index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trajgen.store import complete_runs
from invwnn.train.fit import TrainConfig, torch_threads
from invwnn.train.heldout import eval_sample, evaluation_record, held_out_desc, horizon_bound, horizon_fit_runs
from invwnn.rewind.predictor import load_predictor, read_checkpoint, rewrite_evaluation
from invwnn.train.windows import WindowError, check_windows


def recompute(checkpoint: str | Path, store: str, split_from: str | Path | None = None) -> dict[str, Any]:
    """The evaluation record of ``checkpoint`` recomputed on ``store`` (the training curve kept),
    on the held-out and horizon-fit runs its record names (an older record names no horizon-fit
    runs: chosen as training would). With ``split_from`` (another checkpoint, trained on ``store``)
    its runs and window sampling are used instead, so two predictors compare on the same windows
    (of the kinds both know; no curve). Raises a one-line :class:`WindowError` when the store lacks
    a run or the predictor's window K or horizon U differ from the split's."""
    ckpt = read_checkpoint(checkpoint)
    split = ckpt if split_from is None else read_checkpoint(split_from)
    config = TrainConfig.from_dict(split["train_config"])
    own = ckpt["model_config"]
    if (own.k, own.u, own.target, own.context) != (config.k, config.u, config.target, config.context):
        raise WindowError(f"{checkpoint} predicts U={own.u} back from K={own.k} snapshots; the windows of "
                          f"{split_from} are K={config.k}, U={config.u}")
    old = split["evaluation"]
    val_runs = split["provenance"]["val_runs"]
    runs = complete_runs(store)
    fit_runs = old["horizon_fit"]["runs"] if "horizon_fit" in old else horizon_fit_runs(
        store, [r for r in runs if r not in set(val_runs)], config.fit_runs, config.seed)
    missing = [r for r in [*val_runs, *fit_runs] if r not in set(runs)]
    if missing:
        raise WindowError(f"{store} lacks {len(missing)} run(s) the evaluation of {checkpoint} needs "
                          f"(first: {missing[0]}); collect them with the flags that made the training store")
    if not fit_runs:
        raise WindowError(f"{store} holds no training run of {checkpoint} to fit the damped line on")
    check_windows(store, [*val_runs, *fit_runs], config.k, config.u, config.target)
    model = load_predictor(checkpoint)
    kinds = tuple(kind for kind in config.kinds if kind in own.kinds)  # all of them without split_from
    if not kinds:
        raise WindowError(f"{checkpoint} knows none of the parameter kinds {', '.join(config.kinds)} of {split_from}")
    sample = lambda names: eval_sample(store, names, config.k, config.u, kinds,  # noqa: E731
                                       config.eval_per_kind, config.seed, config.target, config.max_start,
                                       config.context)
    desc = held_out_desc(len(val_runs), config.val_archs)
    if split_from is not None:
        desc += f" held out by {Path(split_from).name}" + (
            f", kinds {', '.join(kinds)} only" if kinds != config.kinds else "")
    record = evaluation_record(model, sample(val_runs), sample(fit_runs), horizon_bound(config.u, config.target),
                               val_runs, fit_runs, desc, store)
    return {**record, "curve": old.get("curve", []) if split_from is None else []}


def evaluate_checkpoint(checkpoint: str | Path, store: str, write: bool = False,
                        split_from: str | Path | None = None) -> dict[str, Any]:
    """:func:`recompute` on one torch thread; with ``write`` the record replaces the checkpoint's
    (atomically, weights untouched). Returns the record."""
    with torch_threads(1):
        record = recompute(checkpoint, store, split_from)
    if write:
        rewrite_evaluation(checkpoint, record)
    return record
