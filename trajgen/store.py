"""The trajectory store's schema, in one place.

Layout (Zarr v3, one directory)::

    traj.zarr/                      attrs: schema_version, kind, index {run name: summary}
      runs/<run-000042>/            attrs: spec, layers, versions, complete, diverged, final_test_acc
        history  (n_coords, n_snapshots) float32, chunks (COORD_CHUNK, TIME_CHUNK), Blosc zstd
        kind     (n_coords,)  uint8   code of the parameter kind (trajgen.nets.KINDS)
        layer    (n_coords,)  uint16  row of the layer table the coordinate belongs to
        pos      (n_coords,)  int32   flat position inside that layer's tensor
        step     (n_snapshots,) int64    optimizer steps taken when the snapshot was recorded
        loss     (n_snapshots,) float32  mean training loss since the previous snapshot
        acc      (n_snapshots,) float32  mean training accuracy since the previous snapshot

A run group is written only by the task that trains it, and marked ``complete`` only after its last
write; the root index is written only by the collecting client. Readers trust the ``complete`` flag,
never the mere existence of a group. Zarr's local store replaces files by rename, so a kill leaves
every file either old or new.
"""
from __future__ import annotations

import contextlib
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from trajgen.nets import KINDS, Layer
from trajgen.spec import RunSpec

SCHEMA_VERSION = 1
STORE_KIND = "trajgen-store"
TIME_CHUNK = 64
COORD_CHUNK = 16384
# The arrays of a run group and their dtypes (the schema above); history is 2-D, the others 1-D.
ARRAY_DTYPES = {"history": np.float32, "kind": np.uint8, "layer": np.uint16, "pos": np.int32,
                "step": np.int64, "loss": np.float32, "acc": np.float32}
SUMMARY_KEYS = ("arch", "optimizer", "n_coords", "n_snapshots", "final_test_acc", "diverged")


class StoreError(RuntimeError):
    """A store that cannot be created, opened or read as a trajgen store."""


def versions() -> dict[str, str]:
    import numcodecs
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "numpy": np.__version__}


def compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _check_root(root: zarr.Group, path: Path) -> zarr.Group:
    kind = root.attrs.get("kind")
    if kind != STORE_KIND:
        raise StoreError(f"{path} is a Zarr group but not a trajgen store")
    version = root.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}; this trajgen reads version "
                         f"{SCHEMA_VERSION} only (collect into a new --store)")
    return root


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open an existing store for reading (``mode='r'``) or appending (``'a'``)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a trajgen store (no zarr.json)")
    try:
        root = zarr.open_group(str(path), mode=mode)
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise StoreError(f"cannot open {path}: {err}") from err
    return _check_root(root, path)


@contextlib.contextmanager
def writing(what: str, hint: str = ""):
    """Turn a failed write (disk full, read-only file system, quota, permissions) into a one-line
    StoreError naming ``what``. Zarr writes each file to a temporary name and renames it, so the
    file being written keeps its old content."""
    try:
        yield
    except OSError as err:
        raise StoreError(f"cannot write {what}: {err.strerror or err}{hint}") from err


def probe_writable(path: Path) -> None:
    """Fail early if nothing can be created at ``path``: probe its nearest existing folder with a
    real file (permission bits say nothing to root or to read-only mounts)."""
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"cannot create {path}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise StoreError(f"cannot write to {parent}: {err.strerror or err}") from None


def check_writable(path: Path) -> None:
    """Fail early, before any training, if ``path`` cannot hold a store."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory")
    probe_writable(path)


def create_store(path: str | Path) -> zarr.Group:
    """Open the store at ``path`` for appending, creating an empty one if there is none."""
    path = Path(path)
    check_writable(path)
    if (path / "zarr.json").is_file():
        root = open_store(path, mode="a")
        if "runs" not in root:  # killed between writing the root and its runs group
            with writing(f"the runs group of {path}"):
                root.create_group("runs")
        return root
    if path.exists() and any(path.iterdir()):
        raise StoreError(f"{path} exists, is not empty and is not a trajgen store")
    with writing(f"a store at {path}"):
        # the root's metadata is written whole, attributes included, so a kill leaves no root
        # that is neither absent nor a trajgen store
        root = zarr.open_group(str(path), mode="w", attributes={
            "kind": STORE_KIND, "schema_version": SCHEMA_VERSION, "index": {}})
        root.create_group("runs")
    return root


def run_names(root: zarr.Group) -> list[str]:
    """Names of all run groups present, complete or not, sorted."""
    if "runs" not in root:  # a store whose creation was cut short holds no runs yet
        return []
    return sorted(name for name, _ in root["runs"].groups())


def is_complete(root: zarr.Group, name: str) -> bool:
    try:
        return bool(root["runs"][name].attrs.get("complete", False))
    except (KeyError, ValueError, OSError):
        return False  # a group whose metadata a kill tore or never wrote


def index(root: zarr.Group) -> dict[str, dict[str, Any]]:
    """The root index: summary of every complete run the collector has registered. Raises if it
    is not a mapping of run names to summaries (``trajgen verify --repair`` rebuilds it)."""
    entries = root.attrs.get("index", {})
    if not (isinstance(entries, dict)
            and all(isinstance(s, dict) and set(SUMMARY_KEYS) <= set(s) for s in entries.values())):
        raise StoreError("the store's index is not a mapping of run summaries; "
                         "`trajgen verify --repair` rebuilds it from the runs")
    return dict(entries)


def set_index(root: zarr.Group, summaries: dict[str, dict[str, Any]]) -> None:
    """Replace the root index by ``summaries`` (run name -> summary), in one atomic file write."""
    with writing("the store's index", "; the runs are kept, rerun the same command to index them"):
        root.attrs["index"] = dict(sorted(summaries.items()))


def add_to_index(root: zarr.Group, summaries: dict[str, dict[str, Any]]) -> None:
    """Register complete runs in the root index (single writer: the collecting client)."""
    set_index(root, {**index(root), **summaries})


def complete_runs(path: str | Path, include_diverged: bool = False) -> list[str]:
    """Runs a reader may use: in the index and flagged complete, skipping diverged runs unless
    asked. Safe to call while a collection is writing to the store."""
    root = open_store(path)
    return [name for name, summary in index(root).items()
            if (include_diverged or not summary.get("diverged")) and is_complete(root, name)]


def run_summary(group: zarr.Group) -> dict[str, Any]:
    """The index entry of a complete run group."""
    a = group.attrs
    spec = a["spec"]
    return {"arch": spec["arch"]["family"], "optimizer": spec["optim"]["name"],
            "n_coords": int(group["history"].shape[0]), "n_snapshots": int(group["history"].shape[1]),
            "final_test_acc": a.get("final_test_acc"), "diverged": bool(a.get("diverged", False))}


def coordinate_arrays(layers: list[Layer]) -> dict[str, np.ndarray]:
    """``kind``, ``layer`` and ``pos`` of every coordinate, each ``(n_coords,)``, as the layer
    table implies them. Raises ValueError for a kind not in ``trajgen.nets.KINDS``."""
    kind = [np.full(layer.numel, KINDS.index(layer.kind), ARRAY_DTYPES["kind"]) for layer in layers]
    row = [np.full(layer.numel, i, ARRAY_DTYPES["layer"]) for i, layer in enumerate(layers)]
    pos = [np.arange(layer.numel, dtype=ARRAY_DTYPES["pos"]) for layer in layers]
    return {"kind": np.concatenate(kind), "layer": np.concatenate(row), "pos": np.concatenate(pos)}


def _create_run_group(runs: zarr.Group, spec: RunSpec, layers: list[Layer], time_chunk: int,
                      coord_chunk: int) -> zarr.Group:
    """An empty, incomplete group for ``spec`` in ``runs``: history ``(n_coords, n_snapshots)``
    filled with NaN, the per-coordinate arrays, and the attributes known before training."""
    if spec.name in runs:
        del runs[spec.name]
    n_coords = sum(layer.numel for layer in layers)
    group = runs.create_group(spec.name)
    group.create_array("history", shape=(n_coords, spec.n_snapshots), dtype=ARRAY_DTYPES["history"],
                       fill_value=np.nan, chunks=(min(coord_chunk, n_coords), min(time_chunk, spec.n_snapshots)),
                       compressors=[compressor()])
    for name, values in coordinate_arrays(layers).items():
        group.create_array(name, data=values, chunks=(min(coord_chunk, n_coords),), compressors=[compressor()])
    group.attrs.update({"spec": spec.to_dict(), "layers": [layer.to_dict() for layer in layers],
                        "versions": versions(), "complete": False})
    return group


class RunWriter:
    """Streams one run into ``runs/<spec.name>``, holding at most one time chunk in memory.

    Any previous, incomplete group of the same name is replaced. Call :meth:`append` once per
    snapshot and :meth:`close` at the end; only ``close`` marks the run complete.
    """

    def __init__(self, path: str | Path, spec: RunSpec, layers: list[Layer],
                 time_chunk: int = TIME_CHUNK, coord_chunk: int = COORD_CHUNK):
        root = open_store(path, mode="a")
        self.where = f"run {spec.name} to {path}"
        with self._writing():
            self.group = _create_run_group(root["runs"], spec, layers, time_chunk, coord_chunk)
        self.history = self.group["history"]
        self.time_chunk = self.history.chunks[1]
        # snapshot-major, flushed transposed
        self.buffer = np.empty((self.time_chunk, self.history.shape[0]), ARRAY_DTYPES["history"])
        self.n_buffered = 0
        self.n_written = 0
        self.step: list[int] = []
        self.loss: list[float] = []
        self.acc: list[float] = []

    def _writing(self):
        return writing(self.where, "; complete runs are kept: make room (or fix the location), "
                                   "then rerun the same command to resume")

    def append(self, step: int, weights: np.ndarray, loss: float, acc: float) -> None:
        """Record one snapshot: ``weights`` is the flat ``(n_coords,)`` float32 vector."""
        self.buffer[self.n_buffered] = weights
        self.n_buffered += 1
        self.step.append(step)
        self.loss.append(loss)
        self.acc.append(acc)
        if self.n_buffered == self.time_chunk:
            self._flush()

    def _flush(self) -> None:
        if self.n_buffered:
            t0 = self.n_written
            with self._writing():
                self.history[:, t0: t0 + self.n_buffered] = self.buffer[: self.n_buffered].T
            self.n_written += self.n_buffered
            self.n_buffered = 0

    def close(self, final_test_acc: float, diverged: bool = False) -> dict[str, Any]:
        """Write the rest, trim unused snapshots (a diverged run stops early), mark complete."""
        self._flush()
        with self._writing():
            if self.n_written < self.history.shape[1]:
                self.history.resize((self.history.shape[0], self.n_written))
            for name, values in (("step", self.step), ("loss", self.loss), ("acc", self.acc)):
                self.group.create_array(name, data=np.asarray(values, ARRAY_DTYPES[name]),
                                        chunks=(max(1, len(values)),))
            self.group.attrs.update({"final_test_acc": float(final_test_acc), "diverged": bool(diverged),
                                     "complete": True})
        return run_summary(self.group)


@dataclass
class RunRecord:
    """A complete run opened for reading; ``history`` stays on disk until sliced."""

    name: str
    spec: RunSpec
    layers: list[Layer]
    history: zarr.Array
    kind: np.ndarray
    layer: np.ndarray
    pos: np.ndarray
    step: np.ndarray
    loss: np.ndarray
    acc: np.ndarray
    final_test_acc: float
    diverged: bool


def open_run(path_or_root: str | Path | zarr.Group, name: str) -> RunRecord:
    root = path_or_root if isinstance(path_or_root, zarr.Group) else open_store(path_or_root)
    if not is_complete(root, name):
        raise StoreError(f"run {name} is missing or incomplete")
    g = root["runs"][name]
    a = g.attrs
    try:
        return RunRecord(name=name, spec=RunSpec.from_dict(a["spec"]),
                         layers=[Layer.from_dict(d) for d in a["layers"]], history=g["history"],
                         kind=g["kind"][:], layer=g["layer"][:], pos=g["pos"][:], step=g["step"][:],
                         loss=g["loss"][:], acc=g["acc"][:], final_test_acc=float(a["final_test_acc"]),
                         diverged=bool(a["diverged"]))
    except (KeyError, TypeError, ValueError) as err:  # a missing array or attribute, a bad spec
        raise StoreError(f"run {name} is malformed ({type(err).__name__}: {err}); "
                         "`trajgen verify` lists what is wrong") from None
