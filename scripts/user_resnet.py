"""Builds the user model behind docs/applier.md's check on a network the defaults never saw:
a plain torchvision ``resnet18(num_classes=10)`` trained by the user's own loop (Adam 1e-3, batch 64,
8 epochs, seed 0) on 2,000 Fashion-MNIST training images as 32x32 RGB, saved as safetensors, with one
whole class (T-shirt/top, index 0) to forget and 1,000 test images; splits as tensor files. Then, for example:

    .venv/bin/python scripts/user_resnet.py --out data/user-resnet
    .venv/bin/invwnn apply --model data/user-resnet/w.safetensors --arch torchvision:resnet18:num_classes=10 \\
        --forget data/user-resnet/forget.pt --retain data/user-resnet/retain.pt --test data/user-resnet/test.pt \\
        --size 32x32 --method invwnn+
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from trajgen import data as datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/user-resnet"))
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    ds = datasets.load("fashion-mnist-rgb", args.data_root)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.y_train), generator=g)[:2000]
    x, y = ds.x_train[idx], ds.y_train[idx]
    test = torch.randperm(len(ds.y_test), generator=g)[:1000]
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xf = x.float() / 255
    start = time.perf_counter()
    for _ in range(8):
        net.train()
        for b in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(net(xf[b]), y[b]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(net.eval().state_dict(), args.out / "w.safetensors")
    forget = y == 0
    torch.save({"x": x[forget], "y": y[forget]}, args.out / "forget.pt")
    torch.save({"x": x[~forget], "y": y[~forget]}, args.out / "retain.pt")
    torch.save({"x": ds.x_test[test], "y": ds.y_test[test]}, args.out / "test.pt")
    print(f"{args.out}: trained in {seconds:.0f} s; {int(forget.sum())} images of class 0 to forget")


if __name__ == "__main__":
    main()
