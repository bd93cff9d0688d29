"""docs/collector.md's "Recording overhead" table (`make bench-trajgen` runs it, then bench_scaling.py).

    .venv/bin/python scripts/bench_trajgen.py [--pairs 7] [--steps 512] [--archs mlp,cnn,vit] [--s3]

Recording overhead is measured with interleaved pairs: for one spec of each of ``--archs`` (global
seed 0, the collection's settings), a bare run (the same training steps, one snapshot at each end,
nothing written, nothing evaluated) and a recorded run (what a collection's worker does for a run,
``trajgen.collect.train_to_store``: its group created, a snapshot every ``--every`` steps
streamed in, the test-set evaluation, the group completed) alternate, A B A B ..., ``--pairs``
times, so drift of a shared machine falls on both sides of each pair. With ``--s3`` the recorded
runs go to a bucket of the local S3 server (trajgen.s3local, moto on 127.0.0.1 in this process).
Reported per architecture: the median of the per-pair ratios recorded / bare minus 1, with the
smallest and largest, in wall time and in this process's CPU time (all its threads; steadier than
wall time on a machine shared with other jobs), and the median seconds of each side. Prints JSON
and a Markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import torch

from trajgen import data as datasets
from trajgen import s3local, store
from trajgen.collect import CollectConfig, plan, train_to_store
from trajgen.spec import RunSpec
from trajgen.train import build_model, keep_freed_memory, snapshots


def seconds(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def bare(spec: RunSpec, data) -> None:
    """``spec``'s training loop alone: the same steps, a snapshot at each end."""
    spec = RunSpec.from_dict({**spec.to_dict(), "every": spec.steps})
    for _ in snapshots(spec, build_model(spec, data), data):
        pass


def recorded(spec: RunSpec, path: str) -> None:
    """A collection worker's whole run of ``spec`` into the store at ``path``."""
    train_to_store(path, spec.to_dict(), None, threads=1)


def recording_cost(spec: RunSpec, data, path: str, pairs: int) -> dict[str, float]:
    """Interleaved bare / recorded runs of ``spec``: per-pair overhead (recorded / bare - 1, in %)
    in wall and CPU time as median, min and max, and the median seconds of each side."""
    timed = [(seconds(bare, spec, data), seconds(recorded, spec, path)) for _ in range(pairs)]
    out = {}
    for i, clock in enumerate(("wall", "cpu")):
        ratios = [100 * (r[i] / b[i] - 1) for b, r in timed]
        out |= {f"{clock}_overhead_pct_median": statistics.median(ratios), f"{clock}_overhead_pct_min": min(ratios),
                f"{clock}_overhead_pct_max": max(ratios), f"{clock}_bare_s_median": statistics.median(b[i] for b, _ in timed),
                f"{clock}_recorded_s_median": statistics.median(r[i] for _, r in timed)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=CollectConfig.steps)
    parser.add_argument("--every", type=int, default=CollectConfig.every)
    parser.add_argument("--archs", default="mlp,cnn,vit", help="one spec of each, in this order")
    parser.add_argument("--s3", action="store_true", help="record into a bucket of the local S3 server")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as a collector's worker does
    data = datasets.load_cached("fashion-mnist")  # the worker function's own cache
    archs = tuple(args.archs.split(","))
    specs = plan(CollectConfig(runs=len(archs), archs=archs, steps=args.steps, every=args.every))
    results: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        if args.s3:
            stack.enter_context(s3local.s3_server("bench"))
        rec = "s3://bench/rec.zarr" if args.s3 else f"{stack.enter_context(tempfile.TemporaryDirectory())}/rec.zarr"
        store.create_store(rec)
        recorded(specs[0], rec)  # warm-up
        for spec in specs:
            results[f"recording_{spec.arch.family}"] = recording_cost(spec, data, rec, args.pairs)
    print(json.dumps(results, indent=2))
    print("\n| figure | value |\n|---|---|")
    for key, value in results.items():
        for clock in ("wall", "cpu"):
            v = {k.removeprefix(f"{clock}_"): x for k, x in value.items() if k.startswith(clock)}
            print(f"| recording overhead, {key.split('_')[1]}, {clock} time ({args.pairs} interleaved pairs): "
                  f"median [min, max] | {v['overhead_pct_median']:+.1f}% [{v['overhead_pct_min']:+.1f}, "
                  f"{v['overhead_pct_max']:+.1f}]; bare {v['bare_s_median']:.2f} s, recorded {v['recorded_s_median']:.2f} s |")


if __name__ == "__main__":
    main()
