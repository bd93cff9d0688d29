"""docs/store.md's "The index" table: adding a run, listing complete runs and ``trajgen info`` as a
store grows to 50,000 runs (Model Zoos' scale).

    .venv/bin/python scripts/index_scale.py [--sizes 500 5000 50000] [--store DIR] [--repeat 5]

The store is grown to each size in turn. The runs that fill it are metadata-sized: a run group
holding only its ``zarr.json`` (spec, ``complete: true``, results), written straight to disk, and
indexed through ``trajgen.store.add_to_index`` in batches of 500, as a collection would index
them. At each size the script measures (median of ``--repeat``):

- add one run: a real 3-snapshot MLP run written by ``RunWriter`` (the collector's writer), then
  ``add_to_index`` of it alone; the index's bytes written by that append;
- list complete runs: ``trajgen.store.complete_runs``;
- ``trajgen info``: ``trajgen.info.describe`` in process, and the command's wall time;
- for contrast, schema 1's index update: one rewrite of a root attribute holding every summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr

from trajgen import data as datasets
from trajgen import nets, store
from trajgen.info import describe
from trajgen.spec import draw_run
from trajgen.train import build_model

BATCH = 500


def summary(i: int) -> dict:
    return {"arch": ("mlp", "cnn", "vit")[i % 3], "optimizer": "adam", "n_coords": 20000 + i % 7,
            "n_snapshots": 129, "final_test_acc": 0.8, "diverged": False, "bytes_stored": 6_000_000}


def fill(path: Path, start: int, stop: int) -> None:
    """Metadata-sized complete runs ``start .. stop-1``, indexed in batches."""
    root = store.open_store(path, "a")
    for b0 in range(start, stop, BATCH):
        names = {}
        for i in range(b0, min(stop, b0 + BATCH)):
            name = f"run-{i:06d}"
            folder = path / "runs" / name
            folder.mkdir()
            (folder / "zarr.json").write_text(json.dumps({
                "zarr_format": 3, "node_type": "group",
                "attributes": {"spec": {"index": i}, "complete": True, "final_test_acc": 0.8, "diverged": False}}))
            names[name] = summary(i)
        store.add_to_index(root, names)


def add_one(path: Path, index: int, data) -> tuple[float, float, int]:
    """(seconds to write a real small run, seconds to index it, index bytes that append wrote)."""
    spec = draw_run(0, index, ("mlp",), steps=2, every=1)
    model = build_model(spec, data)
    t = time.perf_counter()
    writer = store.RunWriter(str(path), spec, nets.layer_table(model))
    w = nets.flat_weights(model).numpy()
    for j in range(spec.n_snapshots):
        writer.append(j, w, 1.0, 0.5)
    s = writer.close(0.5)
    written = time.perf_counter() - t
    root = store.open_store(path, "a")
    count = root["index"].attrs["count"]
    t = time.perf_counter()
    store.add_to_index(root, {spec.name: s})
    indexed = time.perf_counter() - t
    page = path / "index" / f"p{count // store.INDEX_PAGE:06d}" / "zarr.json"
    return written, indexed, page.stat().st_size + (path / "index" / "zarr.json").stat().st_size


def v1_rewrite(n: int, work: Path) -> float:
    """Seconds of one schema-1 index update at ``n`` runs: rewrite the root attribute whole."""
    root = zarr.open_group(str(work / f"v1-{n}.zarr"), mode="w")
    entries = {f"run-{i:06d}": summary(i) for i in range(n)}
    t = time.perf_counter()
    root.attrs["index"] = entries
    return time.perf_counter() - t


def median_time(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000, 50000])
    parser.add_argument("--store", default=None, help="where to grow the store (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    path = Path(args.store) if args.store else work / "scale.zarr"
    store.create_store(path)
    data = datasets.load("fashion-mnist")
    print("| runs | add one run: write / index it (index bytes) | list complete runs | describe | "
          "`trajgen info` | schema 1 index rewrite |\n|---|---|---|---|---|---|")
    have, extra = 0, 10**6  # real added runs get names past the fillers
    for n in sorted(args.sizes):
        t = time.perf_counter()
        fill(path, have, n - args.repeat)
        filled = time.perf_counter() - t
        adds = [add_one(path, extra + k, data) for k in range(args.repeat)]
        extra += args.repeat
        have = n
        listed = median_time(lambda: store.complete_runs(path), args.repeat)
        assert len(store.complete_runs(path)) == n
        described = median_time(lambda: describe(path), args.repeat)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "trajgen.cli", "info", str(path)], capture_output=True, text=True)
        info_s = time.perf_counter() - t
        assert out.returncode == 0, out.stderr
        print(f"| {n:,} | {1e3 * statistics.median(a[0] for a in adds):.0f} ms / "
              f"{1e3 * statistics.median(a[1] for a in adds):.1f} ms ({max(a[2] for a in adds):,} B) | "
              f"{listed:.2f} s | {described:.2f} s | {info_s:.1f} s | {v1_rewrite(n, work):.3f} s |", flush=True)
        print(f"  (filling to {n:,} took {filled:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
