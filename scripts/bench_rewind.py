"""Throughput of the rewind (predicting every coordinate's past), the fixed cost of each invwnn
iteration: coordinates per second for the shipped K = 5 and K = 15 predictors and the line, in
float32 and under bfloat16 autocast, on windows shaped like a real network's (random walks with
the scale of its tensors). The precisions alternate within one process and the report gives the
median of the per-round ratios with its spread, as timings on a shared machine drift.

    .venv/bin/python scripts/bench_rewind.py [--coords 2000000] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from invwnn.unlearn.methods.invwnn import LinearRewinder, load_rewinder, rewind_all
from trajgen.nets import KINDS


def windows(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) random-walk windows around weights of scale 0.05, and conv kind codes (n,)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(n, 1, generator=g) * 0.05
    steps = torch.randn(n, k - 1, generator=g) * 1e-3
    return torch.cat([start, start + steps.cumsum(1)], 1), torch.full((n,), KINDS.index("conv"))


def timed(rewinder, w: torch.Tensor, kinds: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = rewind_all(rewinder, w, kinds)
    assert torch.isfinite(out).all()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coords", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.coords:,} coordinates, {args.rounds} rounds, {args.threads} threads, torch {torch.__version__}")
    for name, k in (("learned K=5", 5), ("learned K=15", 15), ("line", 5)):
        rewinder = LinearRewinder(3.0) if name == "line" else load_rewinder(None, "cpu", k)
        w, kinds = windows(args.coords, k)
        timed(rewinder, w[:10000], kinds[:10000], False)  # warm-up
        f32, b16 = [], []
        for _ in range(args.rounds):
            f32.append(timed(rewinder, w, kinds, False))
            b16.append(timed(rewinder, w, kinds, True))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = rewind_all(rewinder, w[:100000], kinds[:100000])
        high = rewind_all(rewinder, w[:100000], kinds[:100000])
        moved = (high - w[:100000, 0]).abs().mean().item()
        err = (low - high).abs().mean().item() / max(moved, 1e-12)
        ratios = [a / b for a, b in zip(f32, b16)]
        print(f"{name:<13} float32 {args.coords / statistics.median(f32):>12,.0f} coords/s   bfloat16 "
              f"{args.coords / statistics.median(b16):>12,.0f} coords/s   speed-up {statistics.median(ratios):.2f}x "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]   bf16 error {err:.3f} of the rewind's length")


if __name__ == "__main__":
    main()
