"""Crash-safety drill: SIGKILL a real collection (client and dask workers together) at random
moments, restart it with the same command, and compare the finished store with an uninterrupted
one, run for run and bit for bit.

    .venv/bin/python scripts/kill_loop.py [--kills 8] [--runs 12] [--workers 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from trajgen import store
from trajgen.verify import verify


def content(path: str) -> dict[str, str]:
    root = store.open_store(path)
    out = {}
    for name in store.complete_runs(path, include_diverged=True):
        run = store.open_run(root, name)
        h = hashlib.sha256(run.history[:].tobytes())
        for arr in (run.step, run.loss, run.acc):
            h.update(arr.tobytes())
        out[name] = h.hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp()
    flags = ["--runs", str(args.runs), "--steps", "96", "--every", "2", "--quiet"]
    cli = [sys.executable, "-m", "trajgen.cli", "collect"]
    ref, killed = f"{tmp}/ref.zarr", f"{tmp}/killed.zarr"
    t = time.perf_counter()
    subprocess.run(cli + ["--store", ref, "--workers", "0"] + flags, check=True)
    full = time.perf_counter() - t
    kills = 0
    while True:
        proc = subprocess.Popen(cli + ["--store", killed, "--workers", str(args.workers)] + flags,
                                start_new_session=True)
        if kills < args.kills:
            try:
                proc.wait(timeout=rng.uniform(2, 0.6 * full))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                done = len(store.complete_runs(killed)) if os.path.exists(f"{killed}/zarr.json") else 0
                print(f"kill {kills}: {done} runs complete at the kill")
                continue
        if proc.wait() == 0:
            break
    report = verify(killed)
    same = content(killed) == content(ref)
    print(f"{kills} kills; store verifies: {report.ok}; identical to the uninterrupted store: {same}")
    sys.exit(0 if same and report.ok else 1)


if __name__ == "__main__":
    main()
