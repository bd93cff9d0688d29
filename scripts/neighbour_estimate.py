"""Writes docs/results/forget-only-probes.md's neighbour table: how well the forget set's neighbours estimate
Retrain's forget accuracy on the forget-only bench's cases (``invwnn bench --protocol forget-only``
first: this reads its built models).

    .venv/bin/python scripts/neighbour_estimate.py [--work results/forget-only/work] [--seeds 0,1,2]

For each case and seed: the share of invwnn+'s neighbours (its defaults: 4 shifted copies of each
forget image, ``invwnn.unlearn.estimate.neighbours``) whose label, the original model's prediction,
is the forget label, over the near copies (invwnn+'s stop) and over all; beside them the forget
accuracy of Retrain and of the original (percent).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from invwnn.bench.forget_only import CASES
from invwnn.unlearn.apply import Inputs, load_inputs
from invwnn.unlearn import estimate
from invwnn.unlearn.methods import invwnn_plus
from invwnn.unlearn.methods.loop import Context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="results/forget-only/work")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    config = invwnn_plus.Config()
    print("| case | seed | near copies keeping the forget label | all copies | Retrain's forget accuracy | original's |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = Path(args.work) / f"{case}-s{seed}"
            meta = json.loads((folder / "meta.json").read_text())
            c, h, w = meta["shape"]
            loaded, data = load_inputs(Inputs(str(Path(args.work) / meta["model"]), str(folder / "forget.pt"),
                                              size=(h, w), channels=c))
            split, source, near = estimate.neighbours(loaded.model, data.forget, config.neighbour_copies,
                                                         config.neighbour_shift, Context(seed=seed).generator(12), "cpu")
            keep = (split.y == data.forget.y[source]).float()
            acc = meta["accuracy"]
            print(f"| {case} | {seed} | {100 * keep[near].mean():.1f} | {100 * keep.mean():.1f} | "
                  f"{acc['retrain']['forget']:.1f} | {acc['original']['forget']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
