"""Windows of weight history sampled out of the trajgen store, and the damped line's fit.

A *window* is K consecutive snapshots ``h[s : s+K]`` of one coordinate, oldest first; its *target*
is ``h[s-U]``, the value U snapshots before it (in unlearning: where to rewind the fine-tuning
that starts at ``h[s]``). Normalisation and context inputs: :mod:`invwnn.rewind.features`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import zarr

from trajgen.nets import KINDS
from trajgen.store import open_store, run_array
from invwnn.rewind.features import check_context, context_columns, layer_context, step_context
from invwnn.rewind.rewinders import LinearRewinder


class WindowError(ValueError):
    """A window request the data cannot satisfy (window longer than the runs, unknown kind, ...)."""


def fit_horizon(w: torch.Tensor, target: torch.Tensor, upper: float) -> float:
    """The horizon h in ``[0, upper]`` (snapshot intervals) whose damped line
    ``LinearRewinder(h).rewind(w)`` has the least mean absolute error against ``target`` (n,), for
    windows ``w`` (n, K). The line's value is ``a - s * h``, so the error ``sum |s| * |(a - target)
    / s - h|`` is minimised exactly by the ``|s|``-weighted median of ``(a - target) / s``, clamped.
    Windows with zero slope do not depend on h and are ignored; with none left h is 0."""
    w, target = w.double(), target.double()
    a = LinearRewinder(0.0).rewind(w)
    s = a - LinearRewinder(1.0).rewind(w)
    moving = s != 0
    if not moving.any():
        return 0.0
    ratio, weight = ((a - target)[moving] / s[moving]), s[moving].abs()
    order = torch.argsort(ratio)
    cum = torch.cumsum(weight[order], 0)
    median = ratio[order][torch.searchsorted(cum, cum[-1] / 2)]
    return float(median.clamp(0.0, upper))


@dataclass(frozen=True)
class Block:
    """One chunk-aligned slab of a run: coordinates ``[c0, c1)`` and all snapshots."""

    run: str
    c0: int
    c1: int


def run_blocks(store: str, runs: list[str]) -> list[Block]:
    """Every chunk-aligned coordinate block of ``runs``, in a fixed order."""
    root = open_store(store)
    blocks = []
    for name in runs:
        h = root["runs"][name]["history"]
        step = h.chunks[0]
        blocks += [Block(name, c0, min(c0 + step, h.shape[0])) for c0 in range(0, h.shape[0], step)]
    return blocks


TARGETS = ("past", "counterfactual")


def check_windows(store: str, runs: list[str], k: int, u: int, target: str = "past") -> int:
    """Raise :class:`WindowError` unless every run is long enough for one window and its target
    (and, for ``target="counterfactual"``, is a twin run holding one); return the shortest run's
    snapshot count."""
    if target not in TARGETS:
        raise WindowError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    if not runs:
        raise WindowError(f"{store} has no complete runs to read windows from")
    if k < 2 or u < 1:
        raise WindowError(f"need K >= 2 and U >= 1, got K={k}, U={u}")
    root = open_store(store)
    if target == "counterfactual":
        plain = [name for name in runs if "counterfactual" not in root["runs"][name]]
        if plain:
            raise WindowError(f"run {plain[0]} of {store} has no counterfactual weights: counterfactual "
                              "targets need a store of twins (`trajgen twins`)")
        u = 0  # the target is not a snapshot before the window
    shortest = min(root["runs"][name]["history"].shape[1] for name in runs)
    if k + u > shortest:
        raise WindowError(f"a window of K={k} snapshots plus U={u} back needs {k + u} snapshots; "
                          f"the shortest run in {store} has {shortest}")
    return shortest


def kind_codes(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Kind names -> trajgen store codes (uint8), refusing names trajgen does not know."""
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise WindowError(f"unknown parameter kind {unknown[0]!r}; valid: {', '.join(KINDS)}")
    return np.array([KINDS.index(n) for n in names], np.uint8)


def read_block(root: zarr.Group, block: Block, target: str = "past", layers: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(history (n, T) float32, kind codes (n,) uint8, counterfactual (n,) float32 or None, layer
    ids (n,) or None) of one block, a chunk-aligned read (a damaged chunk: trajgen's StoreError)."""
    rows = slice(block.c0, block.c1)
    return (run_array(root, block.run, "history")[rows, :], run_array(root, block.run, "kind")[rows],
            run_array(root, block.run, "counterfactual")[rows] if target == "counterfactual" else None,
            run_array(root, block.run, "layer")[rows] if layers else None)


def run_step_context(root: zarr.Group, run: str) -> np.ndarray:
    """The "step" context (2,) of a run: its optimizer and peak learning rate (from its spec)."""
    optim = root["runs"][run].attrs["spec"]["optim"]
    return step_context(optim["name"], float(optim["lr"])).numpy()


def start_range(n_t: int, k: int, u: int, counterfactual: bool, max_start: int | None) -> tuple[int, int]:
    """Window starts ``[lo, hi]`` (snapshots, inclusive) in a run of ``n_t`` snapshots: from ``u``
    (a past target needs its snapshot; 0 for counterfactual targets) to the last full window, or to
    ``max_start`` when given (the applier's windows start a fine-tuning: late ones look unlike them)."""
    lo, hi = (0 if counterfactual else u), n_t - k
    if max_start is not None:
        hi = min(hi, max(lo, max_start))
    return lo, hi


def cut_windows(history: np.ndarray, codes: np.ndarray, k: int, u: int, per_coord: int,
                rng: np.random.Generator, keep: np.ndarray | None = None, return_index: bool = False,
                counterfactual: np.ndarray | None = None, max_start: int | None = None,
                layers: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Cut ``per_coord`` windows at uniform random starts (:func:`start_range`) from each row of
    ``history`` (n, T): windows (m, K) float32, targets (m,) float32, kind codes (m,) uint8. The
    target is the snapshot ``u`` before the window, or the row's ``counterfactual`` (n,) value.
    Rows of a kind not in ``keep`` or with a non-finite value are dropped. Given ``layers`` (n,),
    the rows of a layer share their starts and the :func:`layer_context` (m, 2) is appended;
    ``return_index`` appends the source rows and start snapshots (m,)."""
    ok = np.isfinite(history).all(1)
    if counterfactual is not None:
        ok &= np.isfinite(counterfactual)
    if keep is not None:
        ok &= np.isin(codes, keep)
    rows = np.flatnonzero(ok)
    lo, hi = start_range(history.shape[1], k, u, counterfactual is not None, max_start)
    n_rows = rows.size
    rows = np.repeat(rows, per_coord)
    if layers is None:
        starts = rng.integers(lo, hi + 1, size=rows.size)
    else:  # one start per (layer, repetition): the layer context compares windows of the same snapshots
        _, group = np.unique(layers[rows].astype(np.int64) * per_coord + np.tile(np.arange(per_coord), n_rows),
                             return_inverse=True)
        starts = rng.integers(lo, hi + 1, size=group.max(initial=-1) + 1)[group]
    cols = starts[:, None] + np.arange(k)
    target = history[rows, starts - u] if counterfactual is None else counterfactual[rows]
    out = history[rows[:, None], cols], target, codes[rows]
    if layers is not None:
        out += (layer_context(torch.from_numpy(out[0]), torch.from_numpy(group)).numpy(),)
    return out + (rows, starts) if return_index else out


class WindowStream(torch.utils.data.IterableDataset):
    """An endless stream of shuffled batches of windows from ``runs`` of the store at ``store``.

    Each worker takes every ``num_workers``-th block of a seeded permutation of all chunk-aligned
    slabs, reads the slab whole, cuts ``per_coord`` windows per coordinate (:func:`cut_windows`) and
    passes them through a shuffle buffer of ``buffer`` windows, so a batch mixes runs and layers.
    Yields dicts: ``w`` (B, K) float32, ``target`` (B,), ``kind`` (B,) int64 store codes,
    ``context`` (B, C) float32. Use with ``DataLoader(batch_size=None)``."""

    def __init__(self, store: str, runs: list[str], k: int, u: int, batch_size: int,
                 kinds: tuple[str, ...] = KINDS, per_coord: int = 8, buffer: int = 1 << 18,
                 seed: int = 0, epochs: int | None = None, target: str = "past", max_start: int | None = None,
                 context: tuple[str, ...] = ()):
        super().__init__()
        self.store, self.runs, self.k, self.u = store, list(runs), k, u
        self.batch_size, self.per_coord, self.buffer, self.seed = batch_size, per_coord, buffer, seed
        self.keep = kind_codes(kinds)
        self.epochs, self.target, self.max_start = epochs, target, max_start
        check_context(context)
        self.context = tuple(context)
        check_windows(store, self.runs, k, u, target)
        self.blocks = run_blocks(store, self.runs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        root = open_store(self.store)  # opened per worker: zarr handles do not cross fork safely
        pending: list[tuple[np.ndarray, ...]] = []  # concatenated only when drained: no O(buffer) copy per block
        n_pending, epoch = 0, 0
        steps = {run: run_step_context(root, run) for run in self.runs} if "step" in self.context else {}
        while self.epochs is None or epoch < self.epochs:
            rng = np.random.default_rng([self.seed, epoch, wid])
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
            cut = 0
            for b in order[wid::nw]:
                block = self.blocks[b]
                h, codes, cf, layers = read_block(root, block, self.target, "layer" in self.context)
                new = cut_windows(h, codes, self.k, self.u, self.per_coord, rng, self.keep,
                                  counterfactual=cf, max_start=self.max_start, layers=layers)
                layer_ctx = new[3] if layers is not None else None
                new = new[:3] + (context_columns(self.context, len(new[1]), steps.get(block.run), layer_ctx),)
                pending.append(new)
                n_pending += len(new[1])
                cut += len(new[1])
                if n_pending >= self.buffer:
                    rest = yield from self._drain(pending, rng, keep=self.buffer // 2)
                    pending, n_pending = [rest], len(rest[1])
            if cut == 0:
                break  # this worker's share holds no usable window: an endless stream would hang
            epoch += 1
        if pending:
            yield from self._drain(pending, np.random.default_rng([self.seed, epoch, wid]), keep=0)

    def _drain(self, pending: list[tuple[np.ndarray, ...]], rng: np.random.Generator, keep: int):
        """Shuffle the pending windows together, yield full batches until about ``keep`` remain
        (all of them when ``keep`` is 0) and return the rest."""
        pool = [np.concatenate(parts) for parts in zip(*pending)]
        perm = rng.permutation(len(pool[1]))
        pool = [p[perm] for p in pool]
        n = len(pool[1])
        n_out = n if keep == 0 else (n - keep) // self.batch_size * self.batch_size
        for a in range(0, n_out, self.batch_size):
            sl = slice(a, min(a + self.batch_size, n_out))
            yield {"w": torch.from_numpy(pool[0][sl]), "target": torch.from_numpy(pool[1][sl]),
                   "kind": torch.from_numpy(pool[2][sl].astype(np.int64)), "context": torch.from_numpy(pool[3][sl])}
        return tuple(p[n_out:] for p in pool)
