"""docs/predictor.md, the meta rewinder's headroom: the oracle line length (0.74x).

How much room is there below the tuned line? On one held-out set of `invwnn meta-train`'s split,
the function-space distance after the loop for the line at each horizon, for the line with its
horizon chosen per triple and draw by the distance itself (an oracle no rewinder can beat by
choosing a length, since it sees the counterfactual), and for meta-trained checkpoints.

Same triples, settings draws and batches as `invwnn meta-train`'s evaluation (its seed + 1), so the
figures match its log. If the oracle line sits near the tuned line, a rewinder that only picks how
far to go cannot reach the target of 0.8x; the rest must come from a different direction per coordinate.

    .venv/bin/python scripts/meta_headroom.py [--first 174] [--part heldout_family] [checkpoint.pt ...]
"""
from __future__ import annotations

import argparse
import random

import torch

from invwnn.train import meta_train
from invwnn.train.meta_train import distances
from invwnn.rewind import LinearRewinder, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help="meta-trained rewinders to place beside the lines")
    parser.add_argument("--store", default="data/counterfactuals.zarr")
    parser.add_argument("--first", type=int, default=None)
    parser.add_argument("--part", default="heldout_family", choices=["heldout_family", "heldout_parents"])
    parser.add_argument("--tuned", type=float, default=2.0, help="the line's horizon tuned on training triples")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as meta-train: spinning intra-op threads crawl on a shared, loaded CPU
    config = meta_train.MetaTrainConfig(store=args.store, first=args.first)
    names = meta_train.split_names(config.store, config.holdout_archs, config.holdout_every, config.first)
    triples = meta_train.TripleSource(config, meta_train._spread(names[args.part], config.eval_triples, config.seed))
    seed = config.seed + 1
    rng = random.Random(seed)
    settings = [meta_train.draw_settings(rng) for _ in range(meta_train.EVAL_DRAWS)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"{args.part}: {len(triples)} triples x {len(settings)} draws, distance after {config.iterations} iterations",
          flush=True)
    lines = {}
    for h in (args.tuned, *(h for h in (0.0, *meta_train.HORIZONS) if h != args.tuned)):
        lines[h] = distances(LinearRewinder(h), triples, settings, seed, config.iterations)
        print(f"  line horizon {h}: {mean(lines[h]):.4f} ({mean(lines[h]) / mean(lines[args.tuned]):.3f}x the tuned line)",
              flush=True)
    tuned = mean(lines[args.tuned])
    oracle = mean([min(col) for col in zip(*lines.values())])
    print(f"  oracle line (horizon per triple and draw): {oracle:.4f} ({oracle / tuned:.3f}x)")
    for path in args.checkpoints:
        rewinder, _ = meta.load(path)
        d = mean(distances(rewinder, triples, settings, seed, config.iterations))
        print(f"  {path}: {d:.4f} ({d / tuned:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
