"""docs/collector.md's "Recording overhead" table (`make bench-trajgen` runs it, then bench_scaling.py).

    .venv/bin/python scripts/bench_trajgen.py [--pairs 7] [--steps 256]

Recording overhead is measured with interleaved pairs: for each of one mlp, one cnn and one vit
spec (global seed 0), a bare run (the same training steps, one snapshot at each end, nothing
written) and a recorded run (every ``--every`` steps into a store, the run group's creation and
completion included) alternate, A B A B ..., ``--pairs`` times, so drift of a shared machine
falls on both sides of each pair. Reported per architecture: the median of the per-pair ratios
recorded / bare minus 1, with the smallest and largest; the share of the recorded run's wall time
the training thread spent in the store writer's calls (append, close, creation). Prints JSON and a
Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from trajgen import data as datasets
from trajgen import store
from trajgen.collect import CollectConfig, plan
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--every", type=int, default=4)
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
    print(json.dumps(results, indent=2))
    print("\n| figure | value |\n|---|---|")
    for key, value in results.items():
        print(f"| recording overhead, {key.split('_')[1]} ({args.pairs} interleaved pairs): median "
              f"[min, max] | {value['overhead_pct_median']:+.1f}% [{value['overhead_pct_min']:+.1f}, "
              f"{value['overhead_pct_max']:+.1f}]; writer's share {value['writer_share_pct_median']:.1f}%; "
              f"bare {value['bare_s_median']:.2f} s |")


if __name__ == "__main__":
    main()
