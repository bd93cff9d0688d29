"""Benchmark of trajgen on this machine: recording overhead, worker scaling, compression, memory.

    .venv/bin/python scripts/bench_trajgen.py [--runs 8] [--steps 256]

Prints a Markdown table for the README. Each figure comes from the same specs (global seed 0).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trajgen import data as datasets
from trajgen import info, store
from trajgen.collect import CollectConfig, collect, plan
from trajgen.nets import layer_table
from trajgen.spec import RunSpec
from trajgen.train import build_model, snapshots


def train_seconds(spec: RunSpec, data, record_to: str | None) -> tuple[float, float]:
    """(total seconds, seconds spent in the store writer) of one run of ``spec``, recording every
    snapshot to ``record_to``, or, when it is None, the bare loop: the same steps with a single
    snapshot at each end."""
    if record_to is None:
        spec = RunSpec.from_dict({**spec.to_dict(), "every": spec.steps})
    model = build_model(spec, data)
    t = time.perf_counter()
    writing = 0.0
    writer = store.RunWriter(record_to, spec, layer_table(model)) if record_to else None
    writing += time.perf_counter() - t
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


def recording_cost(specs: list[RunSpec], data, path: str, repeats: int = 3) -> dict[str, float]:
    """Bare and recorded runs alternate ``repeats`` times; the fastest of each is kept, since a
    shared machine only ever adds time."""
    bare = [min(train_seconds(s, data, None)[0] for _ in range(repeats)) for s in specs]
    recorded = [min(train_seconds(s, data, path) for _ in range(repeats)) for s in specs]
    steps = sum(s.steps for s in specs)
    total_rec = sum(r[0] for r in recorded)
    return {"steps_per_s_bare": steps / sum(bare), "steps_per_s_recording": steps / total_rec,
            "recording_overhead_pct": 100 * (total_rec / sum(bare) - 1),
            "store_writer_share_pct": 100 * sum(r[1] for r in recorded) / total_rec}


def peak_rss_mib(steps: int) -> float:
    """Peak resident memory of an in-process collection of one cnn run of ``steps`` steps."""
    code = (
        "import resource, tempfile; from trajgen.collect import CollectConfig, collect; "
        f"collect(CollectConfig(store=tempfile.mkdtemp() + '/s.zarr', runs=1, archs=('cnn',), steps={steps}, "
        "every=1, workers=0, progress=False)); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1])


def codec_figures(path: str) -> dict[str, dict[str, float]]:
    """Compression ratio and encode speed of one run's history (coordinates x snapshots)."""
    import numcodecs

    root = store.open_store(path)
    name = store.complete_runs(path)[0]
    history = np.ascontiguousarray(root["runs"][name]["history"][:])
    codecs = {"blosc-zstd3-bitshuffle": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE)}
    try:
        codecs["pcodec-8"] = numcodecs.PCodec(level=8)
    except AttributeError:
        pass
    out = {}
    for label, codec in codecs.items():
        t = time.perf_counter()
        encoded = codec.encode(history)
        dt = time.perf_counter() - t
        assert np.array_equal(np.frombuffer(codec.decode(encoded), np.float32).reshape(history.shape), history)
        out[label] = {"ratio": history.nbytes / len(encoded), "MB_per_s": history.nbytes / dt / 1e6}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = datasets.load("fashion-mnist")
    config = CollectConfig(runs=args.runs, steps=args.steps, every=4, progress=False)
    specs = plan(config)[:3]  # one each of mlp, cnn, vit
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rec = f"{tmp}/rec.zarr"
        store.create_store(rec)
        train_seconds(specs[0], data, None)  # warm-up
        results.update(recording_cost(specs, data, rec))
        for workers in (1, 2):
            path = f"{tmp}/w{workers}.zarr"
            t = time.perf_counter()
            collect(CollectConfig(store=path, runs=args.runs, steps=args.steps, every=4,
                                  workers=workers, progress=False))
            results[f"runs_per_hour_{workers}_workers"] = args.runs * 3600 / (time.perf_counter() - t)
        results["worker_speedup"] = results["runs_per_hour_2_workers"] / results["runs_per_hour_1_workers"]
        results["compression_ratio"] = info.describe(f"{tmp}/w2.zarr")["compression_ratio"]
        results["codecs"] = codec_figures(f"{tmp}/w2.zarr")
    results["peak_rss_mib_256_steps"] = peak_rss_mib(256)
    results["peak_rss_mib_2048_steps"] = peak_rss_mib(2048)
    print(json.dumps(results, indent=2))
    print("\n| figure | value |\n|---|---|")
    for key, value in results.items():
        if isinstance(value, float):
            print(f"| {key} | {value:.2f} |")
    for label, d in results["codecs"].items():
        print(f"| codec {label} | {d['ratio']:.2f}x at {d['MB_per_s']:.0f} MB/s |")


if __name__ == "__main__":
    main()
