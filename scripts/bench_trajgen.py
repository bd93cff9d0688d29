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
smallest and largest, and the median seconds of each side. Prints JSON and a Markdown table.
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


def bare_seconds(spec: RunSpec, data) -> float:
    """Wall seconds of ``spec``'s training loop alone: the same steps, a snapshot at each end."""
    spec = RunSpec.from_dict({**spec.to_dict(), "every": spec.steps})
    t = time.perf_counter()
    for _ in snapshots(spec, build_model(spec, data), data):
        pass
    return time.perf_counter() - t


def recorded_seconds(spec: RunSpec, path: str) -> float:
    """Wall seconds of a collection worker's whole run of ``spec`` into the store at ``path``."""
    t = time.perf_counter()
    train_to_store(path, spec.to_dict(), None, threads=1)
    return time.perf_counter() - t


def recording_cost(spec: RunSpec, data, path: str, pairs: int) -> dict[str, float]:
    """Interleaved bare / recorded runs of ``spec``: per-pair overhead (recorded / bare - 1, in %)
    as median, min and max, and the median seconds of each side."""
    ratios, bare_s, rec_s = [], [], []
    for _ in range(pairs):
        bare_s.append(bare_seconds(spec, data))
        rec_s.append(recorded_seconds(spec, path))
        ratios.append(100 * (rec_s[-1] / bare_s[-1] - 1))
    return {"overhead_pct_median": statistics.median(ratios), "overhead_pct_min": min(ratios),
            "overhead_pct_max": max(ratios), "bare_s_median": statistics.median(bare_s),
            "recorded_s_median": statistics.median(rec_s), "steps_per_s_bare": spec.steps / statistics.median(bare_s)}


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
        recorded_seconds(specs[0], rec)  # warm-up
        for spec in specs:
            results[f"recording_{spec.arch.family}"] = recording_cost(spec, data, rec, args.pairs)
    print(json.dumps(results, indent=2))
    print("\n| figure | value |\n|---|---|")
    for key, value in results.items():
        print(f"| recording overhead, {key.split('_')[1]} ({args.pairs} interleaved pairs): median "
              f"[min, max] | {value['overhead_pct_median']:+.1f}% [{value['overhead_pct_min']:+.1f}, "
              f"{value['overhead_pct_max']:+.1f}]; bare {value['bare_s_median']:.2f} s, "
              f"recorded {value['recorded_s_median']:.2f} s |")


if __name__ == "__main__":
    main()
