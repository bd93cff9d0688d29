"""``trajgen verify``: check a store against its schema, run by run, and optionally repair its index.

Repair only ever edits the root index: it drops entries whose run is missing, incomplete or broken
(so readers stop using them) and adds valid complete runs the index lacks. It never deletes a run
group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajgen import store
from trajgen.nets import KINDS, Layer
from trajgen.spec import RunSpec


@dataclass
class Report:
    """Problems found, one line each; ``repaired`` lists what ``repair=True`` changed."""

    runs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(group, name: str, block: int = store.COORD_CHUNK) -> list[str]:
    """Problems of one complete run group: spec, shapes against the layer table, dtypes, finite
    values (read one coordinate block at a time, so memory stays bounded)."""
    try:
        attrs = group.attrs
        spec = RunSpec.from_dict(attrs["spec"])
        layers = [Layer.from_dict(d) for d in attrs["layers"]]
        history = group["history"]
        arrays = {k: group[k] for k in ("kind", "layer", "pos", "step", "loss", "acc")}
        diverged = bool(attrs["diverged"])
    except Exception as err:  # a missing attribute or array, of any zarr error type
        return [f"{name}: unreadable ({type(err).__name__}: {err})"]
    problems = []
    n_coords = sum(layer.numel for layer in layers)
    n_snap = history.shape[1] if history.ndim == 2 else -1
    if history.dtype != np.float32 or history.ndim != 2:
        problems.append(f"{name}: history is {history.dtype} with {history.ndim} dims, expected 2-D float32")
        return problems
    if history.shape[0] != n_coords:
        problems.append(f"{name}: history has {history.shape[0]} coordinates, layer table says {n_coords}")
    if not diverged and n_snap != spec.n_snapshots:
        problems.append(f"{name}: {n_snap} snapshots, spec says {spec.n_snapshots}")
    for key in ("kind", "layer", "pos"):
        if arrays[key].shape != (history.shape[0],):
            problems.append(f"{name}: {key} has shape {arrays[key].shape}, expected ({history.shape[0]},)")
    for key in ("step", "loss", "acc"):
        if arrays[key].shape != (n_snap,):
            problems.append(f"{name}: {key} has shape {arrays[key].shape}, expected ({n_snap},)")
    if problems:
        return problems
    if arrays["kind"][:].max(initial=0) >= len(KINDS):
        problems.append(f"{name}: unknown parameter kind code")
    for start in range(0, history.shape[0], block):
        if not np.isfinite(history[start: start + block]).all():
            problems.append(f"{name}: NaN or Inf in history (coordinates from {start}) of a run not marked diverged")
            break
    return problems


def verify(path: str | Path, repair: bool = False) -> Report:
    """Check every run of the store at ``path``; with ``repair``, make the index match the runs."""
    root = store.open_store(path, mode="a" if repair else "r")
    report = Report()
    idx = store.index(root)
    complete = {}
    for name in store.run_names(root):
        if not store.is_complete(root, name):
            if name in idx:
                report.problems.append(f"{name}: in the index but not complete")
            continue
        report.runs_checked += 1
        problems = check_run(root["runs"][name], name)
        report.problems += problems
        if not problems:
            complete[name] = store.run_summary(root["runs"][name])
    for name in idx:
        if name not in complete and not any(p.startswith(f"{name}:") for p in report.problems):
            report.problems.append(f"{name}: in the index but its group is missing")
    for name in complete:
        if name not in idx:
            report.problems.append(f"{name}: complete but not in the index")
    if repair:
        dropped = sorted(set(idx) - set(complete))
        added = sorted(set(complete) - set(idx))
        if dropped or added:
            store.set_index(root, complete)
            report.repaired = [f"dropped {n} from the index" for n in dropped] + \
                              [f"added {n} to the index" for n in added]
    return report
