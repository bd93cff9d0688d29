"""Writes docs/results/forget-only-probes.md's label-noise table: where the mislabelled images of the
forget-only bench's lenet-noisy case go (``invwnn bench --protocol forget-only`` first).

    .venv/bin/python scripts/label_noise_probe.py [--out results/forget-only] [--seeds 0,1,2]

The forget set is the 600 training images that carry a wrong label. Retrain never saw them, so it
mostly predicts their *true* class; "forget error" only counts predictions that left the wrong label.
For the original, Retrain (retrained here with the recipe and generator state of the bench's
``build``, so it is the same model) and each row's output at its default setting (the files
the bench left under OUT/work/out), this prints the share of forget images predicted as their
given (wrong) label, as their true label and as a third class, and test accuracy. A method that
unlearns the wrong labels should move the second column towards Retrain's; one that only damages the
model moves the third.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from invwnn.bench.forget_only import NOISE, TEST_SIZE, TRAIN_SIZE, clone_generator, lenet_data, output_path, train_lenet
from invwnn.bench.rows import FORGET_ONLY
from invwnn.audit import metrics
from trajgen import data as datasets

CASE = "lenet-noisy"


@torch.no_grad()
def shares(net, x: torch.Tensor, given: torch.Tensor, true: torch.Tensor) -> tuple[float, float, float]:
    """Percent of ``x`` predicted as ``given``, as ``true``, as neither."""
    pred = net(datasets.to_float(x)).argmax(1)
    as_given, as_true = (pred == given).float().mean().item(), (pred == true).float().mean().item()
    return 100 * as_given, 100 * as_true, 100 * (1 - as_given - as_true)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/forget-only")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.out) / "work"
    ds = datasets.load("fashion-mnist")
    rows: dict[str, list[tuple[float, ...]]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        d = lenet_data(seed, TRAIN_SIZE[CASE], TEST_SIZE, NOISE, ds=ds)
        x, y, forget = d["x"], d["y"], d["noisy"]
        true = ds.y_train[d["idx"]][forget]
        xt, yt = ds.x_test[d["test_idx"]], ds.y_test[d["test_idx"]]
        retrain = train_lenet(x[~forget], y[~forget], clone_generator(d["g"]), seed)
        meta = json.loads((work / f"{CASE}-s{seed}" / "meta.json").read_text())
        nets = {"Original": torch.jit.load(str(work / meta["model"])), "Retrain": retrain}
        for row in FORGET_ONLY:
            path = output_path(work, meta, row, None, "test", seed)
            if path.exists():
                nets[row] = torch.jit.load(str(path))
        for name, net in nets.items():
            net.eval()
            rows.setdefault(name, []).append((*shares(net, x[forget], y[forget], true),
                                              metrics.accuracy(net, datasets.to_float(xt), yt)))
    print("| model | predicted as the wrong label | as the true label | as a third class | test accuracy |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        mean = [sum(v[i] for v in values) / len(values) for i in range(4)]
        print(f"| {name} | " + " | ".join(f"{m:.1f}" for m in mean) + " |")
    print(f"\n(percent of the forget set, mean of seeds {args.seeds})")


if __name__ == "__main__":
    main()
