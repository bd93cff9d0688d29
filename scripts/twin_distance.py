"""docs/predictor.md (twins' distance table, cited by docs/collector.md): how well twins correspond per coordinate.

For the first N complete twins of a `trajgen twins` store, compares the twin (the parent retrained
from its own start with the same batch order minus S) with a *stranger* (the same recipe on the same
data minus S, but initial weights and batch order from another seed), both against the original:

- ``twin`` / ``stranger``: L2 distance to the original's weights (all recorded coordinates);
- ``ratio``: twin / stranger (far below 1: the twin's coordinates are the original's, moved);
- ``cos_rewind``: cosine between the twin's displacement (twin - original) and the reverse of the
  first fine-tuning window on S (h[:, 0] - h[:, K-1], K = 5), i.e. how much of "unlearn S" points
  back along "learn S more".

    python scripts/twin_distance.py --store data/twins.zarr --n 6 [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from trajgen import store
from trajgen.episode_spec import EpisodeSpec
from trajgen.nets import flat_weights, layer_table
from trajgen.twins import read_counterfactual, twin_model

STRANGER_SEED = 1_000_003  # added to the parent's seed


def measure(path: str, n: int, k: int = 5) -> list[dict]:
    root = store.open_store(path)
    names = [r for r in store.complete_runs(path) if r.startswith("twin-")][:n]
    rows = []
    for name in names:
        spec = EpisodeSpec.from_dict(root["runs"][name].attrs["episode"])
        h = store.run_array(root, name, "history")[:, :k]
        original, twin = h[:, 0], read_counterfactual(root, name)[:]
        stranger, _ = twin_model(spec, seed=spec.parent.seed + STRANGER_SEED)
        s = flat_weights(stranger, layer_table(stranger)).numpy()
        move, back = twin - original, h[:, 0] - h[:, -1]
        cos = float(move @ back / max(np.linalg.norm(move) * np.linalg.norm(back), 1e-30))
        rows.append({"run": name, "arch": spec.parent.arch.family, "rule": spec.rule, "subset": spec.subset_size,
                     "twin": float(np.linalg.norm(move)), "stranger": float(np.linalg.norm(s - original)),
                     "ratio": float(np.linalg.norm(move) / np.linalg.norm(s - original)), "cos_rewind": cos})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data/twins.zarr")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.store, args.n)
    print("| run | arch | rule | S | twin - original | stranger - original | ratio | cos(twin move, reversed window) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['arch']} | {r['rule']} | {r['subset']} | {r['twin']:.4f} | {r['stranger']:.3f} "
              f"| {r['ratio']:.4f} | {r['cos_rewind']:+.3f} |")
    ratios = [r["ratio"] for r in rows]
    print(f"median ratio {np.median(ratios):.4f} (range {min(ratios):.4f}-{max(ratios):.4f}), "
          f"median cos {np.median([r['cos_rewind'] for r in rows]):+.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
