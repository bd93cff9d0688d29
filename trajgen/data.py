"""The dataset resolver: find image-classification data already on disk, download only as a last
resort. Returns plain tensors; nothing here knows about training or storage.

Search order for ``fashion-mnist`` / ``mnist``: ``root`` given by the user (the four IDX files,
gzipped or not, directly in it or in torchvision's ``<root>/FashionMNIST/raw`` layout), then the
Debian package's folder, then torchvision's download into ``download_root`` if allowed.
``synthetic`` is a small generated task for fast unit tests.
"""
from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("fashion-mnist", "mnist", "synthetic")
DEBIAN_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
               "mnist": Path("/usr/share/datasets/mnist")}
TORCHVISION_DIRS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "mnist": tuple(str(i) for i in range(10)),
    "synthetic": tuple(f"class{i}" for i in range(10)),
}
HOW_TO_GET = {
    "fashion-mnist": "install it with 'apt-get install dataset-fashion-mnist' or pass --data-root DIR "
                     "holding the four IDX files",
    "mnist": "pass --data-root DIR holding the four MNIST IDX files",
}


class DatasetError(FileNotFoundError):
    """The requested dataset is unknown or not on disk."""


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``(N, C, H, W)``, labels as int64 ``(N,)``; pixel scaling happens in
    :func:`to_float` so the resident copy stays 4x smaller."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1]."""
    return x.float().div_(255.0)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims, big-endian sizes, uint8 payload."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data")
    return payload.reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_folders(name: str, root: Path | None) -> list[Path]:
    folders = []
    if root is not None:
        folders += [root, root / TORCHVISION_DIRS[name] / "raw"]
    folders.append(DEBIAN_DIRS[name])
    return folders


def _load_idx(name: str, folder: Path) -> Dataset | None:
    paths = {split: [_find_file(folder, stem) for stem in stems] for split, stems in FILES.items()}
    if any(p is None for pair in paths.values() for p in pair):
        return None
    arrays = {split: (read_idx(img), read_idx(lbl)) for split, (img, lbl) in paths.items()}
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    as_x = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # noqa: E731
    as_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset(name, as_x(xtr), as_y(ytr), as_x(xte), as_y(yte), CLASSES[name])


def synthetic(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Dataset:
    """Ten classes of 28x28 images: a class-specific bright square on noise. Learnable in a few
    dozen steps, for tests about shapes and plumbing rather than learning."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 96, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        for c in range(10):
            r, col = divmod(c, 5)
            x[y == c, :, 2 + 12 * r: 12 + 12 * r, 1 + 5 * col: 6 + 5 * col] = 255
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return Dataset("synthetic", xtr, ytr, xte, yte, CLASSES["synthetic"])


def load(name: str = "fashion-mnist", root: str | Path | None = None, download: bool = False,
         download_root: str | Path = "data") -> Dataset:
    """Resolve and load dataset ``name``. Raises :class:`DatasetError` saying how to get it."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if name == "synthetic":
        return synthetic()
    root = Path(root) if root is not None else None
    if root is not None and not root.is_dir():
        raise DatasetError(f"--data-root {root} is not a directory")
    for folder in _idx_folders(name, root):
        found = _load_idx(name, folder)
        if found is not None:
            return found
    if download:
        import torchvision

        cls = {"fashion-mnist": torchvision.datasets.FashionMNIST,
               "mnist": torchvision.datasets.MNIST}[name]
        for train in (True, False):
            cls(str(download_root), train=train, download=True)
        found = _load_idx(name, Path(download_root) / TORCHVISION_DIRS[name] / "raw")
        if found is not None:
            return found
    searched = ", ".join(str(f) for f in _idx_folders(name, root))
    raise DatasetError(f"{name} not found (searched {searched}); {HOW_TO_GET[name]}")


@functools.lru_cache(maxsize=2)
def load_cached(name: str, root: str | None = None) -> Dataset:
    """:func:`load`, decompressed once per process: a worker that trains many runs, episodes or
    bench units on the same data reads it once (callers must not modify the tensors)."""
    return load(name, root)
