"""docs/predictor.md, "Speed": windows/s of the window loader alone and of predictor training alone.

    .venv/bin/python scripts/bench_invwnn_train.py --store data/traj.zarr --workers 1

The trainer is input-bound unless the loader delivers several times the training rate.
"""
from __future__ import annotations

import argparse
import time

import torch

from trajgen.store import complete_runs
from invwnn.rewind.predictor import ModelConfig, Predictor
from invwnn.train.fit import TRANSFER, window_loss
from invwnn.train.windows import WindowStream


def loader_rate(store: str, workers: int, batch: int, n_batches: int) -> float:
    stream = WindowStream(store, complete_runs(store), 15, 3, batch, per_coord=8, seed=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    for _ in range(3):  # worker start-up and the first shuffle-buffer fill are not the steady state
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        n += len(next(it)["target"])
    return n / (time.perf_counter() - t0)


def train_rate(store: str, batch: int, n_steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    it = iter(WindowStream(store, complete_runs(store), 15, 3, batch, seed=1))
    batches = [next(it) for _ in range(4)]  # in memory: measures the model alone
    model = Predictor(ModelConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0, n = time.perf_counter(), 0
    for i in range(n_steps):
        b = batches[i % len(batches)]
        loss = window_loss(model, b, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(b["target"])
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data/traj.zarr")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--transfer", type=int, default=TRANSFER, help="training batches per loader item (as invwnn train)")
    args = ap.parse_args()
    tr = train_rate(args.store, args.batch_size, 100, args.threads)
    print(f"training alone ({args.threads} thread, batch {args.batch_size}): {tr:,.0f} windows/s")
    for w in args.workers:
        lr = loader_rate(args.store, w, args.batch_size * args.transfer, 400 // args.transfer)
        print(f"loader alone, {w} workers: {lr:,.0f} windows/s = {lr / tr:.1f}x training")
