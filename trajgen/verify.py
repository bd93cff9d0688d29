"""``trajgen verify``: check a store against its schema, run by run, and optionally repair its index.

Repair only ever edits the root index: it drops entries whose run is missing, incomplete or broken
(so readers stop using them) and adds valid complete runs the index lacks. It never deletes a run
group.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajgen import store
from trajgen.nets import Layer
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
    """Problems of one complete run group: its attributes, every array's dtype and shape against
    the layer table and the spec, kind/layer/pos against the layer table, finite history values
    (read one coordinate block at a time, so memory stays bounded)."""
    try:
        attrs = group.attrs
        spec = RunSpec.from_dict(attrs["spec"])
        layers = [Layer.from_dict(d) for d in attrs["layers"]]
        expected = store.coordinate_arrays(layers)
        arrays = {k: group[k] for k in store.ARRAY_DTYPES}
        diverged = bool(attrs["diverged"])
        float(attrs["final_test_acc"])
    except Exception as err:  # a missing attribute or array, of any zarr error type
        return [f"{name}: unreadable ({type(err).__name__}: {err})"]
    problems = _layout_problems(name, spec, layers, arrays, diverged)
    if problems:
        return problems
    for key, values in expected.items():
        if not np.array_equal(arrays[key][:], values):
            problems.append(f"{name}: {key} does not match the layer table")
    history = arrays["history"]
    for start in range(0, history.shape[0], block):
        if not np.isfinite(history[start: start + block]).all():
            problems.append(f"{name}: NaN or Inf in history (coordinates from {start}) of a run not marked diverged")
            break
    return problems


def _layout_problems(name: str, spec: RunSpec, layers: list[Layer], arrays: dict, diverged: bool) -> list[str]:
    """Dtypes and dimensions of every array, then shapes: history ``(n_coords, n_snapshots)``
    with n_coords from a self-consistent layer table, per-coordinate and per-snapshot arrays."""
    problems = [f"{name}: {key} is {a.dtype} with {a.ndim} dims, expected {1 + (key == 'history')}-D "
                f"{np.dtype(store.ARRAY_DTYPES[key])}"
                for key, a in arrays.items()
                if a.dtype != store.ARRAY_DTYPES[key] or a.ndim != 1 + (key == "history")]
    if problems:
        return problems
    offsets = np.cumsum([0] + [layer.numel for layer in layers])
    if any(layer.offset != o or layer.numel != math.prod(layer.shape) for layer, o in zip(layers, offsets)):
        return [f"{name}: the layer table's offsets or sizes do not add up"]
    n_coords, n_snap = offsets[-1], arrays["history"].shape[1]
    if arrays["history"].shape[0] != n_coords:
        problems.append(f"{name}: history has {arrays['history'].shape[0]} coordinates, layer table says {n_coords}")
    if not diverged and n_snap != spec.n_snapshots:
        problems.append(f"{name}: {n_snap} snapshots, spec says {spec.n_snapshots}")
    for key, n in (("kind", n_coords), ("layer", n_coords), ("pos", n_coords), ("step", n_snap),
                   ("loss", n_snap), ("acc", n_snap)):
        if arrays[key].shape != (n,):
            problems.append(f"{name}: {key} has shape {arrays[key].shape}, expected ({n},)")
    return problems


def _same(a, b) -> bool:
    """Equal as JSON (a diverged run's NaN accuracy equals itself)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def verify(path: str | Path, repair: bool = False) -> Report:
    """Check every run of the store at ``path``; with ``repair``, make the index list exactly the
    valid complete runs, with their summaries."""
    root = store.open_store(path, mode="a" if repair else "r")
    report = Report()
    try:
        idx = store.index(root)
    except store.StoreError as err:
        report.problems.append(str(err))
        idx = {}
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
    for name, summary in complete.items():
        if name not in idx:
            report.problems.append(f"{name}: complete but not in the index")
        elif not _same(idx[name], summary):
            report.problems.append(f"{name}: its index entry differs from the run")
    if repair and not _same(root.attrs.get("index"), dict(sorted(complete.items()))):
        store.set_index(root, complete)
        report.repaired = ([f"dropped {n} from the index" for n in sorted(set(idx) - set(complete))]
                           + [f"added {n} to the index" for n in sorted(set(complete) - set(idx))]
                           + [f"rewrote the index entry of {n}" for n in sorted(set(idx) & set(complete))
                              if not _same(idx[n], complete[n])]
                           or ["rebuilt the index"])
    return report
