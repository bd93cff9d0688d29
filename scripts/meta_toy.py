"""Issue 24's first measurement, on toy counterfactual triples (invwnn.rewind.meta.toy_triple: a 196-64-10 MLP,
600 Fashion-MNIST images pooled to 14x14, 60 forgotten): does a rewinder trained on the unlearning
objective beat the line with its horizon tuned on the same training triples, on held-out triples?

For each loop (forget-only: no repair steps; with repair: 4 SGD steps on retain after the rewind) and
each forget lr, the table gives the function-space objective (KL to the counterfactual on forget,
retain and held-out images, summed; lower is better) on the held-out triples for: the parent as it
is (no unlearning), the line with its horizon tuned on the training triples for that forget lr, and
the meta-trained rewinder: one correction for every lr (drawn from the listed ones at every step), on
top of the line tuned at lr 0.01.

    .venv/bin/python scripts/meta_toy.py [--train 6] [--heldout 4] [--steps 400] [--lr 3e-4] [--per-lr]
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from invwnn.rewind import meta
from trajgen import data as datasets

HORIZONS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0)
FORGET_LRS = (3e-3, 1e-2, 3e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6, help="training triples (seeds 0..N-1)")
    parser.add_argument("--heldout", type=int, default=4, help="held-out triples (seeds 1000..)")
    parser.add_argument("--steps", type=int, default=400, help="meta-training steps")
    parser.add_argument("--lr", type=float, default=3e-4, help="meta-training Adam step")
    parser.add_argument("--per-lr", action="store_true",
                        help="train one correction for each forget lr, on the line tuned for it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    images = datasets.load("fashion-mnist")
    train = [meta.toy_triple(s, images) for s in range(args.train)]
    held = [meta.toy_triple(1000 + s, images) for s in range(args.heldout)]
    print(f"toy triples: {args.train} training (seeds 0-{args.train - 1}), {args.heldout} held-out (seeds 1000-); "
          f"meta-training {args.steps} steps at Adam {args.lr:g}; seed 0\n")
    print("| loop | forget lr | parent (no unlearning) | tuned line (horizon) | meta-trained | meta / line |")
    print("|---|---|---|---|---|---|")
    for repair in (0, 4):
        settings = {lr: meta.LoopSettings(lr=lr, repair_steps=repair) for lr in FORGET_LRS}
        horizon, _ = meta.tuned_line(train, settings[1e-2], HORIZONS)
        rewinder = meta.MetaRewinder(meta.MetaConfig(horizon=horizon))
        if not args.per_lr:
            meta.meta_train(rewinder, train, args.steps, args.lr,
                            settings=lambda rng: settings[rng.choice(FORGET_LRS)], seed=0)
        parent = sum(float(meta.objective(t, {n: p.detach() for n, p in t.model.named_parameters()}))
                     for t in held) / len(held)
        for lr, s in settings.items():
            best, _ = meta.tuned_line(train, s, HORIZONS)  # the line gets its horizon tuned for each lr
            line = meta.evaluate(meta.MetaRewinder(meta.MetaConfig(horizon=best)), held, s, seed=7)
            if args.per_lr:
                rewinder = meta.MetaRewinder(meta.MetaConfig(horizon=best))
                meta.meta_train(rewinder, train, args.steps, args.lr, settings=lambda rng, s=s: s, seed=0)
            learned = meta.evaluate(rewinder, held, s, seed=7)
            print(f"| {'forget-only' if repair == 0 else 'with repair'} | {lr:g} | {parent:.3f} | "
                  f"{line:.3f} ({best:g}) | {learned:.3f} | {learned / line:.2f} |")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    random.seed(0)
    main()
