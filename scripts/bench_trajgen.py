"""Benchmark of trajgen on this machine: recording overhead, worker scaling, compression, memory.

    .venv/bin/python scripts/bench_trajgen.py [--pairs 7] [--steps 256] [--runs 16] [--no-scaling]

Recording overhead is measured with interleaved pairs: for each of one mlp, one cnn and one vit
spec (global seed 0), a bare run (the same training steps, one snapshot at each end, nothing
written) and a recorded run (every ``--every`` steps into a store, the run group's creation and
completion included) alternate, A B A B ..., ``--pairs`` times, so drift of a shared machine
falls on both sides of each pair. Reported per architecture: the median of the per-pair ratios
recorded / bare minus 1, with the smallest and largest; the share of the recorded run's wall time
the training thread spent in the store writer's calls (append, close, creation). Then ``--runs``
runs collected with 1 and 2 dask workers (cluster start included), the compression of that
store, and the peak memory of a 256- and a 2,048-step collection. Prints JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from trajgen import data as datasets
from trajgen import info, store
from trajgen.collect import CollectConfig, collect, plan
from trajgen.nets import layer_table
from trajgen.spec import RunSpec
from trajgen.train import build_model, keep_freed_memory, snapshots


def train_seconds(spec: RunSpec, data, record_to: str | None) -> tuple[float, float]:
    """(wall seconds, seconds the training thread spent in store writer calls) of one run of
    ``spec``, recording every snapshot to ``record_to``, or, when it is None, the bare loop: the
    same steps with a single snapshot at each end."""
    if record_to is None:
        spec = RunSpec.from_dict({**spec.to_dict(), "every": spec.steps})
    model = build_model(spec, data)
    t = time.perf_counter()
    writer = store.RunWriter(record_to, spec, layer_table(model)) if record_to else None
    writing = time.perf_counter() - t
    for snap in snapshots(spec, model, data):
        if writer:
            w = time.perf_counter()
            writer.append(snap.step, snap.weights, snap.loss, snap.acc)
            writing += time.perf_counter() - w
    if writer:
        w = time.perf_counter()
        writer.close(0.0)
        writing += time.perf_counter() - w
    return time.perf_counter() - t, writing


def recording_cost(spec: RunSpec, data, path: str, pairs: int) -> dict[str, float]:
    """Interleaved bare / recorded runs of ``spec``: per-pair overhead (recorded / bare - 1, in %)
    as median, min and max, the writer's share of the recorded time (median, %), and the median
    seconds of each side."""
    ratios, shares, bare_s, rec_s = [], [], [], []
    for _ in range(pairs):
        bare = train_seconds(spec, data, None)[0]
        recorded, writing = train_seconds(spec, data, path)
        ratios.append(100 * (recorded / bare - 1))
        shares.append(100 * writing / recorded)
        bare_s.append(bare)
        rec_s.append(recorded)
    return {"overhead_pct_median": statistics.median(ratios), "overhead_pct_min": min(ratios),
            "overhead_pct_max": max(ratios), "writer_share_pct_median": statistics.median(shares),
            "bare_s_median": statistics.median(bare_s), "recorded_s_median": statistics.median(rec_s),
            "steps_per_s_bare": spec.steps / statistics.median(bare_s)}


def peak_rss_mib(steps: int) -> float:
    """Peak resident memory of an in-process collection of one cnn run of ``steps`` steps."""
    code = (
        "import resource, tempfile; from trajgen.collect import CollectConfig, collect; "
        f"collect(CollectConfig(store=tempfile.mkdtemp() + '/s.zarr', runs=1, archs=('cnn',), steps={steps}, "
        "every=1, workers=0, progress=False)); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--runs", type=int, default=16, help="runs of the 1- and 2-worker collections")
    parser.add_argument("--no-scaling", action="store_true", help="skip the collections and memory figures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as a collector's worker does
    data = datasets.load("fashion-mnist")
    specs = plan(CollectConfig(runs=3, steps=args.steps, every=args.every))  # mlp, cnn, vit
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rec = f"{tmp}/rec.zarr"
        store.create_store(rec)
        train_seconds(specs[0], data, rec)  # warm-up
        for spec in specs:
            results[f"recording_{spec.arch.family}"] = recording_cost(spec, data, rec, args.pairs)
        if not args.no_scaling:
            for workers in (1, 2):
                path = f"{tmp}/w{workers}.zarr"
                t = time.perf_counter()
                collect(CollectConfig(store=path, runs=args.runs, steps=args.steps, every=args.every,
                                      workers=workers, progress=False))
                results[f"runs_per_hour_{workers}_workers"] = args.runs * 3600 / (time.perf_counter() - t)
            results["worker_speedup"] = results["runs_per_hour_2_workers"] / results["runs_per_hour_1_workers"]
            results["compression_ratio"] = info.describe(f"{tmp}/w2.zarr")["compression_ratio"]
    if not args.no_scaling:
        results["peak_rss_mib_256_steps"] = peak_rss_mib(256)
        results["peak_rss_mib_2048_steps"] = peak_rss_mib(2048)
    print(json.dumps(results, indent=2))
    print("\n| figure | value |\n|---|---|")
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"| recording overhead, {key.split('_')[1]} ({args.pairs} interleaved pairs): median "
                  f"[min, max] | {value['overhead_pct_median']:+.1f}% [{value['overhead_pct_min']:+.1f}, "
                  f"{value['overhead_pct_max']:+.1f}]; writer's share {value['writer_share_pct_median']:.1f}%; "
                  f"bare {value['bare_s_median']:.2f} s |")
        else:
            print(f"| {key} | {value:.2f} |")


if __name__ == "__main__":
    main()
