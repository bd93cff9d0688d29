"""Writing a run group: created empty and incomplete, its history streamed in time chunks by
:class:`RunWriter`, its per-snapshot arrays and results written, and only then marked complete."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from trajgen.nets import Layer
from trajgen.spec import RunSpec
from trajgen.store.index import run_summary
from trajgen.store.location import open_store, writing
from trajgen.store.schema import (ARRAY_DTYPES, COORD_CHUNK, OPTIONAL_DTYPES, StoreError, check_coords,
                                  coordinate_arrays, history_codecs, small_codecs, time_chunk_for, versions)


def create_run_group(runs: zarr.Group, name: str, spec: RunSpec, layers: list[Layer], n_snapshots: int,
                     time_chunk: int | None = None, coord_chunk: int = COORD_CHUNK,
                     coords: np.ndarray | None = None) -> zarr.Group:
    """An empty, incomplete group ``name`` for ``spec`` in ``runs`` (replacing any group of that name):
    history ``(n_coords, n_snapshots)`` filled with NaN, the per-coordinate arrays, and the
    attributes known before training. ``coords`` (n_coords,) int64: record only these flat
    positions (a sampled run, which also stores them); None: every coordinate. ``time_chunk``
    None: :func:`time_chunk_for` ``n_snapshots``."""
    time_chunk = time_chunk or time_chunk_for(n_snapshots)
    n_params = sum(layer.numel for layer in layers)
    if coords is not None:
        coords = np.asarray(coords, OPTIONAL_DTYPES["coords"])
        problem = check_coords(coords, n_params)
        if problem:
            raise StoreError(f"run {name}: {problem}")
    if name in runs:
        del runs[name]
    n_coords = n_params if coords is None else len(coords)
    # the attributes known now are written with the group, in one piece
    group = runs.create_group(name, attributes={"spec": spec.to_dict(), "layers": [layer.to_dict() for layer in layers],
                                                "versions": versions(), "complete": False})
    group.create_array("history", shape=(n_coords, n_snapshots), dtype=ARRAY_DTYPES["history"],
                       fill_value=np.nan, chunks=(min(coord_chunk, n_coords), min(time_chunk, n_snapshots)),
                       **history_codecs())
    per_coord = coordinate_arrays(layers, coords)
    if coords is not None:
        per_coord["coords"] = coords
    for key, values in per_coord.items():
        group.create_array(key, data=values, chunks=(min(coord_chunk, n_coords),), **small_codecs())
    return group


def finish_run_group(group: zarr.Group, step: np.ndarray, loss: np.ndarray, acc: np.ndarray,
                     final_test_acc: float, diverged: bool) -> dict[str, Any]:
    """Write the per-snapshot arrays (each ``(n_snapshots,)``), the results, then mark the run
    complete; returns its summary. ``history`` must be written already."""
    for name, values in (("step", step), ("loss", loss), ("acc", acc)):
        group.create_array(name, data=np.asarray(values, ARRAY_DTYPES[name]),
                           chunks=(max(1, len(values)),), **small_codecs())
    # one write: the results and the flag together (attrs.update would write the metadata per key)
    group.update_attributes({"final_test_acc": float(final_test_acc), "diverged": bool(diverged), "complete": True})
    return run_summary(group)


class RunWriter:
    """Streams one run into ``runs/<spec.name>``; the training loop never waits for the disk.

    Snapshots are copied into one of two preallocated ``(time_chunk, n_coords)`` float32 buffers
    (with ``coords``, a sampled run: only those flat positions of each snapshot are kept);
    a full buffer is compressed and written by a background thread while the other fills, so at
    most two time chunks (of at most ``MAX_TIME_CHUNK`` snapshots) are held, whatever the run's length. Any previous, incomplete group of
    the same name is replaced. Call :meth:`append` once per snapshot and :meth:`close` at the end;
    only ``close`` marks the run complete.
    """

    def __init__(self, path: str | Path, spec: RunSpec, layers: list[Layer],
                 time_chunk: int | None = None, coord_chunk: int = COORD_CHUNK, coords: np.ndarray | None = None):
        root = open_store(path, mode="a")
        self.where = f"run {spec.name} to {path}"
        with self._writing():
            self.group = create_run_group(root["runs"], spec.name, spec, layers, spec.n_snapshots, time_chunk,
                                          coord_chunk, coords)
        self.coords = None if coords is None else np.asarray(coords, OPTIONAL_DTYPES["coords"])
        self.history = self.group["history"]
        self.time_chunk = self.history.chunks[1]
        # snapshot-major, written transposed; one fills while the thread writes the other
        self.buffers = [np.empty((self.time_chunk, self.history.shape[0]), ARRAY_DTYPES["history"])
                        for _ in range(2)]
        self.n_buffered = 0
        self.n_written = 0  # snapshots handed to the writer thread
        self.step = np.empty(spec.n_snapshots, ARRAY_DTYPES["step"])
        self.loss = np.empty(spec.n_snapshots, ARRAY_DTYPES["loss"])
        self.acc = np.empty(spec.n_snapshots, ARRAY_DTYPES["acc"])
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{spec.name}")
        self._pending: Future | None = None

    def _writing(self):
        return writing(self.where, "; complete runs are kept: make room (or fix the location), "
                                   "then rerun the same command to resume")

    def append(self, step: int, weights: np.ndarray, loss: float, acc: float) -> None:
        """Record one snapshot: ``weights`` is the model's whole flat ``(n_params,)`` float32 vector
        (copied; a sampled run keeps its ``coords`` only)."""
        i = self.n_written + self.n_buffered
        self.buffers[0][self.n_buffered] = weights if self.coords is None else weights[self.coords]
        self.step[i], self.loss[i], self.acc[i] = step, loss, acc
        self.n_buffered += 1
        if self.n_buffered == self.time_chunk:
            self._flush()

    def _write(self, buffer: np.ndarray, t0: int, n: int) -> None:
        # C order: zarr's PCodec wrapper encodes a whole-chunk Fortran-ordered array in memory
        # order, scrambling it (zarr 3.1.6, numcodecs 0.16.6)
        with self._writing():
            self.history[:, t0: t0 + n] = np.ascontiguousarray(buffer[:n].T)

    def _wait(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _flush(self) -> None:
        if self.n_buffered:
            self._wait()  # the other buffer is free again
            self._pending = self._thread.submit(self._write, self.buffers[0], self.n_written, self.n_buffered)
            self.buffers.reverse()
            self.n_written += self.n_buffered
            self.n_buffered = 0

    def close(self, final_test_acc: float, diverged: bool = False) -> dict[str, Any]:
        """Write the rest, trim unused snapshots (a diverged run stops early), mark complete."""
        try:
            self._flush()
            self._wait()
        finally:
            self._thread.shutdown()
        n = self.n_written
        with self._writing():
            if n < self.history.shape[1]:
                self.history.resize((self.history.shape[0], n))
            return finish_run_group(self.group, self.step[:n], self.loss[:n], self.acc[:n],
                                    final_test_acc, diverged)
