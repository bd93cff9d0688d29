"""docs/collector.md's "Counterfactual triples" figures: how close to memorised the parents are,
and how far each twin is from its parent, by family and rule.

    .venv/bin/python scripts/counterfactual_summary.py [--store data/counterfactuals.zarr]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from trajgen import store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data/counterfactuals.zarr")
    args = ap.parse_args()
    root = store.open_store(args.store)
    rows = defaultdict(list)
    for name in store.complete_in(root, store.index(root)):
        attrs = root["runs"][name].attrs
        if "twin" not in attrs:
            continue
        e, t = attrs["episode"], attrs["twin"]
        o, c = t["original"], t["twin"]
        rows[(e["parent"]["arch"]["family"], e["rule"])].append(
            (o.get("retain_acc", np.nan), o["forget_acc"], c["forget_acc"], o["test_acc"], c["test_acc"]))
    print("| family | rule | triples | parent acc on pool without S | parent acc on S | twin acc on S | "
          "parent test | twin test |")
    print("|---|---|---|---|---|---|---|---|")
    for (family, rule), vals in sorted(rows.items()):
        m = np.nanmean(np.array(vals), 0) * 100
        print(f"| {family} | {rule} | {len(vals)} | " + " | ".join(f"{v:.1f}" for v in m) + " |")
    every = np.array([v for vals in rows.values() for v in vals]) * 100
    print(f"\nall {len(every)} triples: parent accuracy on the pool without S median {np.nanmedian(every[:, 0]):.1f}% "
          f"(min {np.nanmin(every[:, 0]):.1f}%)")


if __name__ == "__main__":
    main()
