"""``trajgen verify``: check a store against its schema, run by run and chunk by chunk, and
optionally repair it.

Every chunk of every array of every complete run is read (its CRC32C checked, in a version-2
store) and decoded; a run with damaged chunks is one problem line naming them. Repair marks each
complete run that has a problem incomplete, so that the same ``trajgen collect`` command retrains
it, and makes the index list exactly the valid complete runs. It never deletes a run group and
never touches a run without a problem.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajgen import store
from trajgen.nets import Layer
from trajgen.spec import RunSpec

# damaged chunks named in a run's problem line; the count covers the rest
NAMED_CHUNKS = 4


@dataclass
class Report:
    """Problems found, one line each; ``repaired`` lists what ``repair=True`` changed."""

    runs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(group, name: str) -> list[str]:
    """Problems of one complete run group: its attributes, every array's dtype and shape against
    the layer table and the spec, every chunk readable (one line naming the damaged ones),
    kind/layer/pos against the layer table (at a sampled run's ``coords``, which must be strictly
    increasing positions inside the model), finite history values. Memory: one chunk of history
    at a time, plus the ``(n_coords,)`` coordinate arrays."""
    try:
        attrs = group.attrs
        spec = RunSpec.from_dict(attrs["spec"])
        layers = [Layer.from_dict(d) for d in attrs["layers"]]
        arrays = {k: group[k] for k in store.ARRAY_DTYPES}
        arrays.update({k: group[k] for k in store.OPTIONAL_DTYPES if k in group})
        if attrs.get("kind") == "twin" and "counterfactual" not in arrays:
            return [f"{name}: a twin run without its counterfactual weights"]
        if ("parent_buffers" in arrays) != ("counterfactual_buffers" in arrays):
            return [f"{name}: norm statistics of only one of the parent and its twin"]
        diverged = bool(attrs["diverged"])
        float(attrs["final_test_acc"])
    except Exception as err:  # a missing attribute or array, of any zarr error type
        return [f"{name}: unreadable ({type(err).__name__}: {err})"]
    problems = _layout_problems(name, spec, layers, arrays, diverged)
    if problems:
        return problems
    damaged, values, first_bad = _scan(arrays)
    if damaged:
        more = f" and {len(damaged) - NAMED_CHUNKS} more" if len(damaged) > NAMED_CHUNKS else ""
        return [f"{name}: {len(damaged)} damaged chunk(s): {', '.join(damaged[:NAMED_CHUNKS])}{more}"]
    coords = values.get("coords")
    if coords is not None:
        problem = store.check_coords(coords, sum(layer.numel for layer in layers))
        if problem:
            return problems + [f"{name}: {problem}"]
    for key, want in store.coordinate_arrays(layers, coords).items():
        if not np.array_equal(values[key], want):
            problems.append(f"{name}: {key} does not match the layer table")
    if first_bad is not None:
        problems.append(f"{name}: NaN or Inf in history (coordinates from {first_bad}) of a run not marked diverged")
    return problems


def _scan(arrays: dict) -> tuple[list[str], dict[str, np.ndarray], int | None]:
    """Read every chunk of every array once: (damaged chunks as ``key/c/i/j (reason)``, the
    values of kind/layer/pos (and coords), first coordinate of the first history chunk holding NaN or Inf)."""
    damaged, values, first_bad = [], {}, None
    for key, a in arrays.items():
        out = np.empty(a.shape, a.dtype) if key in ("kind", "layer", "pos", "coords") else None
        grid = [range(-(-s // c)) for s, c in zip(a.shape, a.chunks)]
        for idx in itertools.product(*grid):
            sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, a.chunks))
            try:
                chunk = a[sel]
            except Exception as err:  # any codec or file error of a damaged chunk
                damaged.append(f"{key}/c/{'/'.join(map(str, idx))} ({store.read_error(err)})")
                continue
            if out is not None:
                out[sel] = chunk
            if key == "history" and first_bad is None and not np.isfinite(chunk).all():
                first_bad = sel[0].start
        if out is not None:
            values[key] = out
    return damaged, values, first_bad


def _layout_problems(name: str, spec: RunSpec, layers: list[Layer], arrays: dict, diverged: bool) -> list[str]:
    """Dtypes and dimensions of every array, then shapes: history ``(n_coords, n_snapshots)``
    with n_coords from a self-consistent layer table (a sampled run: the length of ``coords``, at
    most the model's size), per-coordinate and per-snapshot arrays."""
    dtypes = {**store.ARRAY_DTYPES, **store.OPTIONAL_DTYPES}
    problems = [f"{name}: {key} is {a.dtype} with {a.ndim} dims, expected {1 + (key == 'history')}-D "
                f"{np.dtype(dtypes[key])}"
                for key, a in arrays.items()
                if a.dtype != dtypes[key] or a.ndim != 1 + (key == "history")]
    if problems:
        return problems
    offsets = np.cumsum([0] + [layer.numel for layer in layers])
    if any(layer.offset != o or layer.numel != math.prod(layer.shape) for layer, o in zip(layers, offsets)):
        return [f"{name}: the layer table's offsets or sizes do not add up"]
    n_coords, n_snap = offsets[-1], arrays["history"].shape[1]
    if "coords" in arrays:
        if not 0 < arrays["coords"].shape[0] <= n_coords:
            return [f"{name}: {arrays['coords'].shape[0]} sampled coords for a model of {n_coords} weights"]
        n_coords = arrays["coords"].shape[0]
    if arrays["history"].shape[0] != n_coords:
        problems.append(f"{name}: history has {arrays['history'].shape[0]} coordinates, "
                        + ("coords say" if "coords" in arrays else "layer table says") + f" {n_coords}")
    if not diverged and n_snap != spec.n_snapshots:
        problems.append(f"{name}: {n_snap} snapshots, spec says {spec.n_snapshots}")
    for key, n in (("kind", n_coords), ("layer", n_coords), ("pos", n_coords), ("step", n_snap),
                   ("loss", n_snap), ("acc", n_snap), ("counterfactual", n_coords)):
        if key in arrays and arrays[key].shape != (n,):
            problems.append(f"{name}: {key} has shape {arrays[key].shape}, expected ({n},)")
    if "parent_buffers" in arrays and arrays["parent_buffers"].shape != arrays["counterfactual_buffers"].shape:
        problems.append(f"{name}: the parent's and the twin's norm statistics differ in length")
    return problems


def _same(a, b) -> bool:
    """Equal as JSON (a diverged run's NaN accuracy equals itself)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def verify(path: str | Path, repair: bool = False) -> Report:
    """Check every run of the store at ``path``; with ``repair``, mark the complete runs that have
    a problem incomplete (the same collect command retrains them), then make the index list
    exactly the valid complete runs, with their summaries."""
    root = store.open_store(path, mode="a" if repair else "r")
    report = Report()
    try:
        idx = store.index(root)
    except store.StoreError as err:
        report.problems.append(str(err))
        idx = None
    indexed = idx or {}
    complete, broken = {}, []
    for name in store.run_names(root):
        if not store.is_complete(root, name):
            if name in indexed:
                report.problems.append(f"{name}: in the index but not complete")
            continue
        report.runs_checked += 1
        problems = check_run(root["runs"][name], name)
        report.problems += problems
        if problems:
            broken.append(name)
        else:
            complete[name] = _summary(root, name)
    for name in indexed:
        if name not in complete and not any(p.startswith(f"{name}:") for p in report.problems):
            report.problems.append(f"{name}: in the index but its group is missing")
    for name, summary in complete.items():
        if name not in indexed:
            report.problems.append(f"{name}: complete but not in the index")
        elif not _same(indexed[name], summary):
            report.problems.append(f"{name}: its index entry differs from the run")
    if repair:
        for name in broken:  # first the flag: a kill before the index is fixed leaves a stale entry
            with store.writing(f"the complete flag of {name}"):  # that collect's resume drops
                root["runs"][name].attrs["complete"] = False
            report.repaired.append(f"marked {name} incomplete: the same collect command retrains it")
        if idx is None or not _same(idx, dict(sorted(complete.items()))):
            store.set_index(root, complete)
            report.repaired += ([f"dropped {n} from the index" for n in sorted(set(indexed) - set(complete))]
                                + [f"added {n} to the index" for n in sorted(set(complete) - set(indexed))]
                                + [f"rewrote the index entry of {n}" for n in sorted(set(indexed) & set(complete))
                                   if not _same(indexed[n], complete[n])]
                                or ["rebuilt the index"])
    return report


def _summary(root, name: str) -> dict:
    """The index entry run ``name`` should have (a version-1 index records no sizes)."""
    summary = store.run_summary(root["runs"][name])
    if store.schema_version(root) == 1:
        del summary["bytes_stored"]
    return summary
