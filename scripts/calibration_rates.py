"""docs/applier.md, "Calibrated steps": the rate (9,559 on the ResNet-18, 5.9x the CNN's) and the lrs it gives.

How far one Adam step moves a model's outputs per unit of learning rate (the rate the calibrated
step divides by), and the step sizes that the bench CNN's tuned learning rates correspond to.

    .venv/bin/python scripts/calibration_rates.py bench:random10            # the bench CNN (trains it if not cached)
    .venv/bin/python scripts/calibration_rates.py --model w.safetensors --arch torchvision:resnet18:num_classes=10 \
        --forget forget.pt --retain retain.pt --size 32x32
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from invwnn.unlearn.apply import Inputs, load_inputs
from invwnn.unlearn.methods import Context, Data
from invwnn.unlearn.methods import invwnn
from invwnn.unlearn.methods.loop import Sampler, calibrate_lr

FIXED_LRS = {"invwnn lr": 1e-4, "invwnn+ lr": 1.6e-3}  # tuned on the bench CNN
FIXED_REPAIR_LR = 8.5e-4


def rates(model: torch.nn.Module, data: Data) -> tuple[float, float]:
    """(forget-step rate, repair-step rate): rms change of the centred logits on the probe images
    per unit of Adam learning rate."""
    ctx = Context(seed=0)
    params = invwnn.rewindable(model)[0]
    probe = invwnn.probe_images(data, ctx)
    out = []
    for split, salt in ((data.forget, 7), (data.retain, 8)):
        x, y = Sampler(split, 128, ctx.generator(salt), "cpu")()
        out.append(1.0 / calibrate_lr(model, params, lambda: F.cross_entropy(model(x), y), probe, "adam", 1.0)["lr"])
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", nargs="?", help="bench:SCENARIO (seed 0's original, from data/bench-cache)")
    parser.add_argument("--model")
    parser.add_argument("--arch")
    parser.add_argument("--forget")
    parser.add_argument("--retain")
    parser.add_argument("--size")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.bench:
        from invwnn.bench import prepare, scenarios
        prep = prepare.prepare_cached(scenarios.scenario_config(args.bench.split(":", 1)[1]), 0, "data/bench-cache")
        s = prep.scenario
        model, data, label = prep.original, Data(s.forget_split, s.classes, s.retain_split), args.bench
    else:
        size = tuple(int(v) for v in args.size.split("x")) if args.size else None
        loaded, data = load_inputs(Inputs(args.model, args.forget, args.retain, size=size, arch=args.arch))
        model, label = loaded.model, args.model
    forget_rate, repair_rate = rates(model, data)
    n = sum(p.numel() for p in invwnn.rewindable(model)[0])
    print(f"{label}: {n:,} rewindable coordinates; forget-step rate {forget_rate:,.0f}, repair-step rate "
          f"{repair_rate:,.0f} (rms centred-logit change per unit lr)")
    for name, lr in FIXED_LRS.items():
        print(f"  {name} {lr:g} is a step size of {lr * forget_rate:.3g}")
    print(f"  invwnn+ repair lr {FIXED_REPAIR_LR:g} is a repair step size of {FIXED_REPAIR_LR * repair_rate:.3g}")


if __name__ == "__main__":
    main()
