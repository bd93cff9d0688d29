"""Torch datasets over a trajgen store, local or remote, for anyone who uses the data: no invwnn.

``Runs`` is map-style, one item per run (its whole history); ``Windows`` streams every window of
consecutive snapshots, reading each chunk-aligned block of coordinates once and sharding the blocks
across DataLoader workers (and, with ``shard``, across processes). Both take what ``--store`` takes
(a path, ``file://``, ``s3://bucket/prefix``: credentials from the environment) and open the store
once per process, so they work with a plain ``DataLoader(..., num_workers=N)``::

    from torch.utils.data import DataLoader
    from trajgen.loader import Runs, Windows

    runs = Runs("s3://bucket/traj.zarr")              # the complete, non-diverged runs
    first = runs[0]                                    # dict: history (n_coords, n_snapshots), ...
    loader = DataLoader(Windows("s3://bucket/traj.zarr", length=8), batch_size=None, num_workers=2)
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from trajgen.store import complete_runs, open_run, open_store


class _Store:
    """The store, opened lazily once per process (an open handle does not survive a fork)."""

    def __init__(self, store: str, runs: list[str] | None, include_diverged: bool):
        self.store = str(store)
        self.runs = list(runs) if runs is not None else complete_runs(self.store, include_diverged)
        self._root, self._pid = None, None

    def root(self):
        if self._pid != os.getpid():
            self._root, self._pid = open_store(self.store), os.getpid()
        return self._root

    def __getstate__(self) -> dict[str, Any]:  # workers started by spawn reopen the store
        return {**self.__dict__, "_root": None, "_pid": None}


class Runs(_Store, torch.utils.data.Dataset):
    """Run ``i`` of ``runs`` (default: the complete runs of the index, diverged ones only with
    ``include_diverged``) as a dict: ``name``; ``spec`` (the RunSpec as a dict); ``history``
    (n_coords, n_snapshots) float32; ``step`` (n_snapshots,) int64 optimizer steps; ``loss``, ``acc``
    (n_snapshots,) float32 training means since the previous snapshot; ``kind``, ``layer``, ``pos``
    (n_coords,) int64 (parameter kind code of ``trajgen.nets.KINDS``, layer-table row, position in
    the layer); ``final_test_acc``. Use ``DataLoader(runs, batch_size=None)``: runs differ in shape."""

    def __init__(self, store: str, runs: list[str] | None = None, include_diverged: bool = False):
        super().__init__(store, runs, include_diverged)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        run = open_run(self.root(), self.runs[i])
        out = {"name": run.name, "spec": run.spec.to_dict(), "history": torch.from_numpy(run.history[:]),
               "final_test_acc": run.final_test_acc}
        for key in ("step", "kind", "layer", "pos"):
            out[key] = torch.from_numpy(getattr(run, key).astype("int64"))
        return {**out, "loss": torch.from_numpy(run.loss), "acc": torch.from_numpy(run.acc)}


class Windows(_Store, torch.utils.data.IterableDataset):
    """Every window of ``length`` consecutive snapshots, starting every ``stride`` snapshots, of
    every chunk-aligned block of coordinates of ``runs`` (as :class:`Runs`). Yields dicts: ``run``,
    ``c0`` (the block's first coordinate), ``t0`` (the window's first snapshot), ``weights``
    (n_rows, length) float32, ``kind`` (n_rows,) int64, ``step`` (length,) int64. Blocks are dealt
    round-robin, in a fixed order, to ``shard = (rank, world)`` and then to DataLoader workers, so
    each window is yielded exactly once over all of them; each block is read once, whole."""

    def __init__(self, store: str, length: int, stride: int = 1, runs: list[str] | None = None,
                 include_diverged: bool = False, shard: tuple[int, int] = (0, 1)):
        super().__init__(store, runs, include_diverged)
        if length < 1 or stride < 1:
            raise ValueError(f"need length >= 1 and stride >= 1, got {length}, {stride}")
        self.length, self.stride, self.shard = length, stride, shard
        root = self.root()
        self.blocks = [(name, c0, min(c0 + h.chunks[0], h.shape[0]))
                       for name in self.runs for h in [root["runs"][name]["history"]]
                       for c0 in range(0, h.shape[0], h.chunks[0])]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        rank, world = self.shard
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for name, c0, c1 in self.blocks[rank * workers + worker:: world * workers]:
            run = open_run(self.root(), name)
            history = torch.from_numpy(run.history[c0:c1])
            kind, step = torch.from_numpy(run.kind[c0:c1].astype("int64")), torch.from_numpy(run.step)
            for t0 in range(0, history.shape[1] - self.length + 1, self.stride):
                yield {"run": name, "c0": c0, "t0": t0, "weights": history[:, t0: t0 + self.length],
                       "kind": kind, "step": step[t0: t0 + self.length]}
