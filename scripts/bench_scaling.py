"""docs/collector.md's "Two workers" and "Object storage" figures: worker scaling, local against S3.

    .venv/bin/python scripts/bench_scaling.py [--runs 24] [--repeats 2] [--steps 512] [--s3]

The first ``--runs`` specs of ``trajgen collect --archs cnn,vit`` (seed 0) are trained four ways,
alternating within each repeat so that drift of a shared machine falls on every side:

- bare-1: one fresh process trains them all, nothing recorded (one torch thread);
- bare-2: two fresh processes start together (a barrier after loading the data) and each trains
  half of them, the halves balanced on bare-1's per-run times (longest first); the wall time is
  the later one's. bare-1 / bare-2 is the most two worker processes can give on this machine;
- collect-1 and collect-2: ``trajgen.collect`` with 1 and 2 dask workers into a fresh store,
  cluster start-up and recording included, as a user runs it.

Prints JSON: per repeat the four wall times and per-run bare times, and the medians of the
ratios (speed-ups) over the repeats with their min and max. With ``--s3``, only collect-2, into a
fresh folder and into a bucket of the local S3 server (moto, the ``dev`` extra, on 127.0.0.1),
alternating: runs per hour, bytes, objects and requests (by method, index or runs) per run, and the
ratio of runs per hour.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import re
import statistics
import tempfile
import time
from collections import Counter

from trajgen import s3local, store
from trajgen.collect import CollectConfig, collect, plan
from trajgen.spec import RunSpec


def train_bare(spec_dicts: list[dict], barrier, results) -> None:
    """Train each spec bare (one snapshot at each end), after every process has loaded the data;
    put (per-run seconds, wall seconds from the barrier to the last run's end) on ``results``."""
    import torch
    from trajgen import data as datasets
    from trajgen.train import build_model, keep_freed_memory, snapshots

    torch.set_num_threads(1)
    keep_freed_memory()  # as a collector's worker does
    specs = [RunSpec.from_dict(d) for d in spec_dicts]
    data = datasets.load_cached(specs[0].dataset, None)
    barrier.wait()
    start, seconds = time.perf_counter(), []
    for spec in specs:
        spec = RunSpec.from_dict({**spec.to_dict(), "every": spec.steps})
        t = time.perf_counter()
        for _ in snapshots(spec, build_model(spec, data), data):
            pass
        seconds.append(time.perf_counter() - t)
    results.put((seconds, time.perf_counter() - start))


def bare(groups: list[list[RunSpec]]) -> tuple[float, list[list[float]]]:
    """Wall seconds of ``len(groups)`` processes training their groups at once, and their per-run times."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(groups)), ctx.Queue()
    procs = [ctx.Process(target=train_bare, args=([s.to_dict() for s in g], barrier, results)) for g in groups]
    for p in procs:
        p.start()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return max(wall for _, wall in out), [seconds for seconds, _ in out]


def balanced_halves(specs: list[RunSpec], seconds: list[float]) -> list[list[RunSpec]]:
    """Longest-first greedy split of the runs into two groups of nearly equal total time."""
    halves: list[list[RunSpec]] = [[], []]
    load = [0.0, 0.0]
    for t, spec in sorted(zip(seconds, specs), key=lambda p: -p[0]):
        i = load.index(min(load))
        halves[i].append(spec)
        load[i] += t
    return halves


def collected(specs_config: CollectConfig, workers: int, url: str | None = None) -> dict[str, float]:
    """Wall seconds of a collection into a fresh folder (or into ``url``), its runs per hour and
    bytes per run (the index's ``bytes_stored``)."""
    with tempfile.TemporaryDirectory() as tmp:
        where = url or f"{tmp}/s.zarr"
        t = time.perf_counter()
        collect(CollectConfig(**{**specs_config.to_dict(), "store": where, "workers": workers}))
        seconds = time.perf_counter() - t
        sizes = [s["bytes_stored"] for s in store.index(store.open_store(where)).values()]
    return {"seconds": seconds, "runs_per_hour": 3600 * len(sizes) / seconds,
            "bytes_per_run": statistics.mean(sizes)}


class Requests(logging.Handler):
    """Counts the local S3 server's requests by method and by part of the store (index or runs)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        request = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()).split('"')  # no colour codes
        method, target = (request[1].split() + ["", ""])[:2] if len(request) > 1 else ("", "")
        if method:
            self.counts[method, "index" if "/index/" in target else "runs"] += 1


def local_and_s3(config: CollectConfig, repeats: int) -> dict:
    """Two workers into a folder and into the local S3 server (trajgen.s3local), alternating which
    goes first in each repeat; also the objects a run leaves in the bucket."""
    import boto3

    out, requests = {"local": [], "s3": []}, Requests()
    with s3local.s3_server("bench") as _:
        log = logging.getLogger("werkzeug")  # the server logs one line per request
        log.setLevel(logging.INFO)
        log.propagate, log.handlers = False, [requests]
        for r in range(repeats):
            for where in (["local", "s3"] if r % 2 == 0 else ["s3", "local"]):
                url = f"s3://bench/r{r}.zarr" if where == "s3" else None
                out[where].append(collected(config, 2, url))
                print(f"repeat {r} {where}: {out[where][-1]}", flush=True)
        keys = boto3.client("s3").list_objects_v2(Bucket="bench", Prefix="r0.zarr/runs/")["KeyCount"]
    summary = {w: {k: spread([x[k] for x in xs]) for k in xs[0]} for w, xs in out.items()}
    per_run = {f"{m} {part}": n / (repeats * config.runs) for (m, part), n in sorted(requests.counts.items())}
    return {"repeats": out, **summary, "objects_per_run": keys / config.runs, "requests_per_run": per_run,
            "s3_over_local_runs_per_hour": spread([s["runs_per_hour"] / l["runs_per_hour"]
                                                   for s, l in zip(out["s3"], out["local"])])}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--s3", action="store_true", help="2 workers into a folder against the local S3 server")
    args = parser.parse_args()
    config = CollectConfig(archs=("cnn", "vit"), runs=args.runs, steps=args.steps, progress=False)
    if args.s3:
        print(json.dumps(local_and_s3(config, args.repeats), indent=2))
        return
    specs = plan(config)
    repeats = []
    for r in range(args.repeats):
        one, (per_run,) = bare([specs])
        two, _ = bare(balanced_halves(specs, per_run))
        c1 = collected(config, 1)["seconds"]
        c2 = collected(config, 2)["seconds"]
        repeats.append({"bare_1": one, "bare_2": two, "collect_1": c1, "collect_2": c2, "per_run_bare_1": per_run})
        print(f"repeat {r}: bare 1/2 processes {one:.1f}/{two:.1f} s, collect 1/2 workers {c1:.1f}/{c2:.1f} s", flush=True)
    summary = {
        "runs": args.runs, "steps": args.steps, "repeats": repeats,
        "ceiling_speedup": spread([x["bare_1"] / x["bare_2"] for x in repeats]),
        "collector_speedup": spread([x["collect_1"] / x["collect_2"] for x in repeats]),
        "collect_1_over_bare_1": spread([x["collect_1"] / x["bare_1"] for x in repeats]),
        "collect_2_over_bare_2": spread([x["collect_2"] / x["bare_2"] for x in repeats]),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
