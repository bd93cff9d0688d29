"""A small CIFAR-10 / CIFAR-100 folder in torchvision's pickled layout, written by the tests
themselves (random pixels, the real files' names, keys and dtypes; nothing is downloaded).

The official files are Python 2 pickles (protocol 2) of dicts with byte-string keys: ``data`` a
uint8 array (N, 3072) of N 32x32 RGB images, channel-major, and the labels as a list of ints; the
metadata file holds the class names. These are written the same way.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _batch(rng: np.random.Generator, n: int, n_classes: int, label_key: str, name: str) -> dict:
    return {b"batch_label": name.encode(), label_key.encode(): rng.integers(0, n_classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 40, n_test: int = 50, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches of ``per_batch`` images, a test
    batch of ``n_test`` and ``batches.meta``; returns the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _batch(rng, per_batch, 10, "labels", f"training batch {i} of 5"))
    _dump(folder / "test_batch", _batch(rng, n_test, 10, "labels", "testing batch 1 of 1"))
    _dump(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                    b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with ``train``, ``test`` (fine and coarse labels) and ``meta``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = _batch(rng, n, 100, "fine_labels", name)
        batch[b"coarse_labels"] = rng.integers(0, 20, n).tolist()
        _dump(folder / name, batch)
    _dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return folder
