"""Writes docs/applier.md's trace of a forget-only run (with user_resnet.py's model):
traces an iterative method (invwnn, invwnn+) on a model file: after each iteration, accuracy on the
forget images and on 512 retain and test images the method may never see, and the effective number
of predicted classes on the forget images and their rotated copies (what the forget-only guard
watches). Shows what a forget-only run does to the images nobody watches.

    .venv/bin/python scripts/trace_unlearning.py --model data/user-resnet/w.safetensors \\
        --arch torchvision:resnet18:num_classes=10 --size 32x32 --splits data/user-resnet \\
        --method invwnn --given forget
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from invwnn.audit import metrics
from invwnn.rewind import make_rewinder
from invwnn.unlearn.apply import Inputs, load_inputs, make_config
from invwnn.unlearn.guard import collapse_probe, effective_classes, watch_subset
from invwnn.unlearn.methods import REGISTRY, Context, Data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--arch")
    parser.add_argument("--size")
    parser.add_argument("--splits", required=True, help="folder with forget.pt, retain.pt, test.pt")
    parser.add_argument("--method", default="invwnn", choices=("invwnn", "invwnn+"))
    parser.add_argument("--given", default="forget", help="what the method sees: forget or forget,retain")
    parser.add_argument("--overrides", default="{}", help="method settings as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    s = args.splits
    loaded, data = load_inputs(Inputs(args.model, f"{s}/forget.pt", f"{s}/retain.pt", f"{s}/test.pt",
                                      size=size, arch=args.arch))
    config = make_config(args.method, json.loads(args.overrides))
    ctx = Context(seed=0, rewinder=make_rewinder("learned", config))
    probe, retain, test = collapse_probe(data.forget), watch_subset(data.retain, 0), watch_subset(data.test, 0)
    start = time.perf_counter()

    def show(i: int, model: torch.nn.Module) -> None:
        print(f"iteration {i + 1}: forget {metrics.accuracy(model, data.forget.x, data.forget.y):.1f}  retain "
              f"{metrics.accuracy(model, retain.x, retain.y):.1f}  test {metrics.accuracy(model, test.x, test.y):.1f}  "
              f"effective classes {effective_classes(model, probe, 'cpu'):.2f}  ({time.perf_counter() - start:.0f} s)",
              flush=True)

    show(-1, loaded.model)
    ctx.on_iteration = show
    given = Data(data.forget, data.classes, data.retain if "retain" in args.given else None)
    REGISTRY[args.method].run(loaded.model, given, config, ctx)
    print("calibration", json.dumps({k: {"lr": v["lr"], "step_size": v["step_size"]} for k, v in ctx.calibration.items()}))


if __name__ == "__main__":
    main()
