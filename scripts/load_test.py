"""Load drill: a store that already holds many runs, a 2-worker collection adding more, and
``trajgen info`` and ``invwnn train`` run against it, again and again, while it writes.

    .venv/bin/python scripts/load_test.py [--runs 500] [--new 200] [--workers 2] [--store DIR]

The pre-existing runs are written straight through ``trajgen.store.RunWriter`` (the collector's
own writer) with the specs the collection plans and the layer tables of their real models, but
synthetic weights (the initial weights plus a small random walk): a valid store, which ``trajgen
verify`` checks in full at the end, made in minutes instead of hours of training. Every reader
call must exit 0 and see a number of complete runs between the pre-existing count and the count
at its end, never less than the previous call. Prints the timings; exits 1 if any check failed.
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

from trajgen import data as datasets
from trajgen import nets, store
from trajgen.collect import CollectConfig, plan
from trajgen.info import describe
from trajgen.train import build_model
from trajgen.verify import verify

# The smallest runs the spec allows: MLPs, 3 snapshots (steps 0, 1, 2); invwnn train then uses
# windows of K = 2 snapshots and predicts U = 1 back.
SETTINGS = dict(archs=("mlp",), steps=2, every=1)
COLLECT_FLAGS = ["--archs", "mlp", "--steps", "2", "--every", "1", "--quiet"]
TRAIN_FLAGS = ["--window", "2", "--back", "1", "--steps", "5", "--batch-size", "256", "--val-fraction",
               "0.02", "--eval-per-kind", "20", "--workers", "0", "--quiet"]


def fill(path: str, n_runs: int, seed: int = 0) -> float:
    """Write the first ``n_runs`` runs of the planned collection at ``path`` with synthetic
    weights and index them; returns the seconds it took."""
    start = time.perf_counter()
    store.create_store(path)
    data = datasets.load("fashion-mnist")
    rng = np.random.default_rng(seed)
    summaries = {}
    for spec in plan(CollectConfig(store=path, runs=n_runs, seed=seed, **SETTINGS)):
        model = build_model(spec, data)
        writer = store.RunWriter(path, spec, nets.layer_table(model))
        w = nets.flat_weights(model).numpy()
        for j in range(spec.n_snapshots):
            writer.append(j * spec.every, w, loss=2.3 / (1 + j), acc=0.1 + 0.1 * j)
            w = w + rng.normal(0, 1e-3, w.shape).astype(np.float32)
        summaries[spec.name] = writer.close(final_test_acc=float(rng.uniform(0.6, 0.8)))
    store.add_to_index(store.open_store(path, "a"), summaries)
    return time.perf_counter() - start


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def info_runs(path: str) -> tuple[int, float]:
    """Complete runs ``trajgen info`` reports, and its wall time in seconds; raises if it fails."""
    start = time.perf_counter()
    out = subprocess.run(_cli("trajgen.cli", "info", path, "--json"), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"trajgen info exited {out.returncode}: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout)["runs"], time.perf_counter() - start


def train_runs(path: str, out: str) -> tuple[int, list[str], float]:
    """Runs one small ``invwnn train`` saw (all, and the held-out names), and its wall time."""
    start = time.perf_counter()
    done = subprocess.run(_cli("invwnn.cli.main", "train", "--store", path, "--out", out, *TRAIN_FLAGS),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"invwnn train exited {done.returncode}: {done.stderr.strip()[-300:]}")
    seconds = time.perf_counter() - start
    inspected = subprocess.run(_cli("invwnn.cli.main", "inspect", out, "--json"), capture_output=True, text=True,
                               check=True)
    provenance = json.loads(inspected.stdout)["provenance"]
    return provenance["runs"], provenance["val_runs"], seconds


def hammer(path: str, n_before: int, n_new: int, workers: int, work: str) -> dict:
    """Collect ``n_new`` more runs with ``workers`` dask workers while calling info and train in
    turn; check what each saw. Returns the figures and the list of failed checks."""
    total = n_before + n_new
    collect = subprocess.Popen(_cli("trajgen.cli", "collect", "--store", path, "--runs", str(total),
                                    "--workers", str(workers), *COLLECT_FLAGS),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.perf_counter()
    first_new = Path(path) / "runs" / f"run-{n_before:06d}"
    while collect.poll() is None and not first_new.exists():  # start reading once it writes
        time.sleep(0.1)
    failures, info_s, train_s, seen, overlapped = [], [], [], [n_before], 0
    while collect.poll() is None or not (train_s or failures):  # one reader round at least
        overlapped += len(store.run_names(store.open_store(path))) > len(store.complete_runs(path))
        try:
            n, seconds = info_runs(path)
            info_s.append(seconds)
            runs, held_out, seconds = train_runs(path, f"{work}/p.pt")
            train_s.append(seconds)
        except RuntimeError as err:
            failures.append(str(err))
            continue
        complete = set(store.complete_runs(path))
        if not seen[-1] <= n <= runs <= len(complete) or not set(held_out) <= complete:
            failures.append(f"saw {n} (info) and {runs} (train) runs after {seen[-1]}, "
                            f"{len(complete)} complete now")
        seen += [n, runs]
    out, err = collect.communicate()
    collect_s = time.perf_counter() - start
    if collect.returncode != 0:
        failures.append(f"collect exited {collect.returncode}: {err.strip()[-300:]}")
    return {"collect_s": collect_s, "info_s": info_s, "train_s": train_s, "seen": seen, "overlapped": overlapped,
            "collect_output": out.strip(), "failures": failures}


def figures(path: str, n_runs: int, n_new: int, workers: int) -> dict:
    """The whole drill on a fresh store at ``path``: fill, hammer, verify."""
    work = tempfile.mkdtemp()
    result = {"fill_s": fill(path, n_runs)}
    _, result["info_at_fill_s"] = info_runs(path)
    start = time.perf_counter()
    describe(path)
    result["describe_s"] = time.perf_counter() - start
    result.update(hammer(path, n_runs, n_new, workers, work))
    start = time.perf_counter()
    report = verify(path)
    result["verify_s"] = time.perf_counter() - start
    result["verify_ok"], result["runs_checked"] = report.ok, report.runs_checked
    result["complete"] = len(store.complete_runs(path))
    result["disk_mib"] = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="runs in the store before the collection")
    parser.add_argument("--new", type=int, default=200, help="runs the collection adds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default=None, help="where to build the store (default: a temporary folder)")
    args = parser.parse_args()
    path = args.store or f"{tempfile.mkdtemp()}/load.zarr"
    r = figures(path, args.runs, args.new, args.workers)
    print(f"store {path}: {r['complete']} complete runs, {r['disk_mib']:.0f} MiB on disk")
    print(f"fill {args.runs} runs through RunWriter: {r['fill_s']:.1f} s")
    print(f"trajgen info at {args.runs} runs (idle): {r['info_at_fill_s']:.2f} s, of which "
          f"{r['describe_s']:.2f} s in trajgen.info.describe (the rest: starting Python and torch)")
    print(f"collect {args.new} more runs, {args.workers} workers, while readers ran: {r['collect_s']:.1f} s "
          f"({r['collect_output']})")
    for name, key in (("trajgen info", "info_s"), ("invwnn train", "train_s")):
        if r[key]:
            print(f"{name} during the collection: {len(r[key])} calls, median {np.median(r[key]):.2f} s, "
                  f"max {max(r[key]):.2f} s")
    print(f"complete runs seen, in order: {r['seen']}; {r['overlapped']} reader rounds started "
          "while a run was half-written")
    print(f"trajgen verify: {r['runs_checked']} runs in {r['verify_s']:.1f} s, ok: {r['verify_ok']}")
    for failure in r["failures"]:
        print(f"FAILED: {failure}")
    sys.exit(0 if r["verify_ok"] and not r["failures"] and r["complete"] == args.runs + args.new else 1)


if __name__ == "__main__":
    main()
