"""Originals for the applier's tests.

``tiny_original``: the prepare command's pipeline on 1,500 Fashion-MNIST images with an 8-16
channel CNN, built once per test session and shared by modules.

``unseen_lenet``: a model the project never tuned anything on, as a new user would bring it: a
LeNet-like CNN with BatchNorm (conv6-conv16-fc120-fc84), trained outside the project's code on
2,000 Fashion-MNIST images of which 20% carry a wrong label, saved as TorchScript (no class names,
no preprocessing recorded), with the noisy images as the forget set and tensor files as splits.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.original import PrepareConfig, prepare
from trajgen import data as datasets

_BUILT: dict[str, Path] = {}

TINY = dict(train_size=1500, test_size=500, width=8, depth=2, epochs=8, lr=3e-3, batch_size=64)
LENET = dict(train_size=2000, test_size=1000, noise=0.2, epochs=12, lr=2e-3, batch_size=64, seed=0)


def tiny_original(base: Path, name: str = "random", **overrides) -> Path:
    """Folder with model.pt, forget/, retain/, test/, split.json; cached per session by name."""
    if name not in _BUILT:
        out = base / name
        prepare(out, PrepareConfig(**{**TINY, **overrides}))
        _BUILT[name] = out
    return _BUILT[name]


class LeNet(nn.Module):
    """LeNet-5 with BatchNorm after each convolution; input (N, 1, 28, 28) in [0, 1]."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                                  nn.ReLU(), nn.Linear(84, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def unseen_lenet(base: Path) -> Path:
    """Folder with lenet.pt (TorchScript) and forget.pt / retain.pt / test.pt tensor files of
    uint8 images and labels (forget: the mislabelled 20%, with their wrong labels); cached per
    session."""
    if "lenet" in _BUILT:
        return _BUILT["lenet"]
    c = LENET
    ds = datasets.load("fashion-mnist")
    g = torch.Generator().manual_seed(c["seed"])
    idx = torch.randperm(len(ds.y_train), generator=g)[: c["train_size"]]
    x, y = ds.x_train[idx], ds.y_train[idx].clone()
    noisy = torch.zeros(len(y), dtype=torch.bool)
    noisy[torch.randperm(len(y), generator=g)[: round(c["noise"] * len(y))]] = True
    y[noisy] = (y[noisy] + torch.randint(1, 10, (int(noisy.sum()),), generator=g)) % 10  # always wrong
    test_idx = torch.randperm(len(ds.y_test), generator=g)[: c["test_size"]]
    torch.manual_seed(c["seed"])
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), lr=c["lr"])
    xf = datasets.to_float(x)
    for _ in range(c["epochs"]):
        for b in torch.randperm(len(y), generator=g).split(c["batch_size"]):
            opt.zero_grad()
            F.cross_entropy(net(xf[b]), y[b]).backward()
            opt.step()
    net.eval()
    out = base / "lenet"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(net), str(out / "lenet.pt"))
    torch.save({"x": x[noisy], "y": y[noisy]}, out / "forget.pt")
    torch.save({"x": x[~noisy], "y": y[~noisy]}, out / "retain.pt")
    torch.save({"x": ds.x_test[test_idx], "y": ds.y_test[test_idx]}, out / "test.pt")
    _BUILT["lenet"] = out
    return out
