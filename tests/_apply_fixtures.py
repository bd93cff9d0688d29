"""Originals for the applier's tests.

``tiny_original``: the prepare command's pipeline on 1,500 Fashion-MNIST images with an 8-16
channel CNN, built once per test session and shared by modules.

``unseen_lenet``: a model the project never tuned anything on, as a new user would bring it: a
LeNet-like CNN with BatchNorm (conv6-conv16-fc120-fc84), trained outside the project's code on
2,000 Fashion-MNIST images of which 20% carry a wrong label, saved as TorchScript (no class names,
no preprocessing recorded), with the noisy images as the forget set and tensor files as splits.
Its data and training recipe (``lenet_data``, ``train_lenet``) are also used by
``scripts/forget_only.py``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.inputs.prepare import PrepareConfig, prepare
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


def lenet_data(seed: int = 0, train_size: int = 2000, test_size: int = 1000, noise: float = 0.2,
               ds=None) -> dict:
    """The unseen LeNet's data: ``train_size`` seeded Fashion-MNIST training images (``idx`` into
    the training split), uint8 ``x`` and labels ``y`` of which a seeded share ``noise`` carry a wrong
    label (``noisy`` mask), ``test_size`` seeded test images (``test_idx``), and the generator ``g``
    in the state the training recipe continues from."""
    ds = ds if ds is not None else datasets.load("fashion-mnist")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.y_train), generator=g)[:train_size]
    x, y = ds.x_train[idx], ds.y_train[idx].clone()
    noisy = torch.zeros(len(y), dtype=torch.bool)
    noisy[torch.randperm(len(y), generator=g)[: round(noise * len(y))]] = True
    y[noisy] = (y[noisy] + torch.randint(1, 10, (int(noisy.sum()),), generator=g)) % 10  # always wrong
    test_idx = torch.randperm(len(ds.y_test), generator=g)[:test_size]
    return {"ds": ds, "idx": idx, "x": x, "y": y, "noisy": noisy, "test_idx": test_idx, "g": g}


def train_lenet(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, seed: int = 0, epochs: int = 12,
                lr: float = 2e-3, batch_size: int = 64) -> LeNet:
    """The unseen LeNet's recipe: initialised from ``seed``, Adam ``lr``, ``epochs`` over uint8
    images ``x`` and labels ``y`` in minibatches drawn from ``g``; returned in eval mode."""
    torch.manual_seed(seed)
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xf = datasets.to_float(x)
    for _ in range(epochs):
        for b in torch.randperm(len(y), generator=g).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(net(xf[b]), y[b]).backward()
            opt.step()
    return net.eval()


def unseen_lenet(base: Path) -> Path:
    """Folder with lenet.pt (TorchScript) and forget.pt / retain.pt / test.pt tensor files of
    uint8 images and labels (forget: the mislabelled 20%, with their wrong labels); cached per
    session."""
    if "lenet" in _BUILT:
        return _BUILT["lenet"]
    c = LENET
    d = lenet_data(c["seed"], c["train_size"], c["test_size"], c["noise"])
    x, y, noisy, ds = d["x"], d["y"], d["noisy"], d["ds"]
    net = train_lenet(x, y, d["g"], c["seed"], c["epochs"], c["lr"], c["batch_size"])
    out = base / "lenet"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(net), str(out / "lenet.pt"))
    torch.save({"x": x[noisy], "y": y[noisy]}, out / "forget.pt")
    torch.save({"x": x[~noisy], "y": y[~noisy]}, out / "retain.pt")
    torch.save({"x": ds.x_test[d["test_idx"]], "y": ds.y_test[d["test_idx"]]}, out / "test.pt")
    _BUILT["lenet"] = out
    return out
