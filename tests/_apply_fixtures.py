"""Originals for the applier's tests.

``tiny_original``: the prepare command's pipeline on 1,500 Fashion-MNIST images with an 8-16
channel CNN, built once per test session and shared by modules.

``unseen_lenet``: a model the project never tuned anything on, as a new user would bring it: a
LeNet-like CNN with BatchNorm (conv6-conv16-fc120-fc84), trained outside the project's code on
2,000 Fashion-MNIST images of which 20% carry a wrong label, saved as TorchScript (no class names,
no preprocessing recorded), with the noisy images as the forget set and tensor files as splits.
Its data and training recipe (``lenet_data``, ``train_lenet``) are the forget-only bench's
(:mod:`invwnn.bench.forget_only`).

Both are built once per test session: under pytest-xdist, by the first worker that asks, in a folder
every worker sees (:func:`built_once`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from invwnn.bench.forget_only import lenet_data, train_lenet
from invwnn.inputs.prepare import PrepareConfig, prepare

_BUILT: dict[str, Path] = {}

TINY = dict(train_size=1500, test_size=500, width=8, depth=2, epochs=8, lr=3e-3, batch_size=64)
LENET = dict(train_size=2000, test_size=1000, noise=0.2, epochs=12, lr=2e-3, batch_size=64, seed=0)


def built_once(base: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``base/name`` after ``build(base/name)``, built once per test session: under pytest-xdist
    ``base`` (a worker's own temporary folder) is swapped for its parent, which the session's
    workers share, and the first worker to ask builds while the others wait on a file lock."""
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            build(out)
            done.touch()
    return out


def tiny_original(base: Path, name: str = "random", **overrides) -> Path:
    """Folder with model.pt, forget/, retain/, test/, split.json; built once per session by name."""
    if name not in _BUILT:
        _BUILT[name] = built_once(base, name, lambda out: prepare(out, PrepareConfig(**{**TINY, **overrides})))
    return _BUILT[name]


def unseen_lenet(base: Path) -> Path:
    """Folder with lenet.pt (TorchScript) and forget.pt / retain.pt / test.pt tensor files of
    uint8 images and labels (forget: the mislabelled 20%, with their wrong labels); built once per
    session."""
    if "lenet" not in _BUILT:
        _BUILT["lenet"] = built_once(base, "lenet", _write_lenet)
    return _BUILT["lenet"]


def _write_lenet(out: Path) -> None:
    c = LENET
    d = lenet_data(c["seed"], c["train_size"], c["test_size"], c["noise"])
    x, y, noisy, ds = d["x"], d["y"], d["noisy"], d["ds"]
    net = train_lenet(x, y, d["g"], c["seed"], c["epochs"], c["lr"], c["batch_size"])
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(net), str(out / "lenet.pt"))
    torch.save({"x": x[noisy], "y": y[noisy]}, out / "forget.pt")
    torch.save({"x": x[~noisy], "y": y[~noisy]}, out / "retain.pt")
    torch.save({"x": ds.x_test[d["test_idx"]], "y": ds.y_test[d["test_idx"]]}, out / "test.pt")


def tensor_splits(out, x: torch.Tensor, y: torch.Tensor, sizes: dict[str, int]) -> dict[str, str]:
    """Write consecutive slices of ``(x, y)`` as tensor files ``out/<split>.pt``; their paths."""
    paths, start = {}, 0
    for name, n in sizes.items():
        torch.save({"x": x[start: start + n], "y": y[start: start + n]}, out / f"{name}.pt")
        paths[name], start = str(out / f"{name}.pt"), start + n
    return paths
