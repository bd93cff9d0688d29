"""The dataset resolver: find image-classification data already on disk, download only as a last
resort. Returns plain tensors; nothing here knows about training or storage.

Search order for ``fashion-mnist`` / ``mnist``: ``root`` given by the user (the four IDX files,
gzipped or not, directly in it or in torchvision's ``<root>/FashionMNIST/raw`` layout), then the
Debian package's folder, then torchvision's download into ``download_root`` if allowed.
``fashion-mnist-rgb`` is Fashion-MNIST as 3x32x32 (zero-padded by 2, the grey channel repeated),
for architectures that expect RGB images of CIFAR's size.

``cifar10`` / ``cifar100``: torchvision's pickled batches, a ``cifar-10-batches-py`` (or
``cifar-100-python``) folder in ``root`` (or ``root`` itself), read by this module, not by
torchvision's classes (they check the official files' checksums, so they refuse any other file).
The batches are Python pickles of dicts of numpy arrays; :class:`ArrayUnpickler` reads them
allowing numpy array reconstruction and nothing else, so a crafted file cannot run code. With
``download`` torchvision fetches the official files into ``download_root`` first.
``synthetic`` is a small generated task for fast unit tests.
"""
from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("fashion-mnist", "mnist", "fashion-mnist-rgb", "cifar10", "cifar100", "synthetic")
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
CLASSES["fashion-mnist-rgb"] = CLASSES["fashion-mnist"]
HOW_TO_GET = {
    "fashion-mnist": "install it with 'apt-get install dataset-fashion-mnist' or pass --data-root DIR "
                     "holding the four IDX files",
    "mnist": "pass --data-root DIR holding the four MNIST IDX files",
}
# CIFAR in torchvision's layout: folder, training batches, test batch, metadata file, label key,
# class-name key of the metadata
CIFAR = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}
for _name, (_folder, *_rest) in CIFAR.items():
    HOW_TO_GET[_name] = (f"pass --data-root DIR holding torchvision's {_folder} folder, or --download "
                         "on a machine with internet access to fetch it with torchvision")


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


# What a CIFAR batch file may reconstruct: numpy arrays (and scalars, dtypes), and the byte
# strings protocol-2 pickles encode through _codecs. numpy 2 moved numpy.core to numpy._core.
_ALLOWED_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                    for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"),
                                                               ("_codecs", "encode")}


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds plain Python containers and numpy arrays only: any other global
    (a class, a function such as ``os.system``) raises ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        return super().find_class(module, name)


def read_pickled_batch(path: Path) -> dict[str, object]:
    """One CIFAR batch or metadata file: a dict with str keys (Python 2 byte-string keys and
    values decoded as latin-1, as torchvision does). Raises :class:`DatasetError` for a file
    that is not such a pickle or asks for anything beyond numpy arrays."""
    try:
        with open(path, "rb") as f:
            d = ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetError(f"{path} is not a CIFAR batch file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path} is not a CIFAR batch file (not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_split(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = read_pickled_batch(path)
    try:
        x = np.asarray(d["data"], dtype=np.uint8)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path} lacks the CIFAR arrays ({type(err).__name__}: {err})") from None
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
        raise DatasetError(f"{path}: expected data (N, 3072) and N labels, got {x.shape} and {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def _load_cifar(name: str, folder: Path) -> Dataset | None:
    """CIFAR from ``folder`` (torchvision's batch folder), or None if its files are not all there."""
    _, train_files, test_file, meta_file, label_key, names_key = CIFAR[name]
    paths = [folder / f for f in (*train_files, test_file, meta_file)]
    if not all(p.is_file() for p in paths):
        return None
    parts = [_cifar_split(folder / f, label_key) for f in train_files]
    xte, yte = _cifar_split(folder / test_file, label_key)
    classes = read_pickled_batch(folder / meta_file).get(names_key)
    if not isinstance(classes, list) or not classes:
        raise DatasetError(f"{folder / meta_file} lacks the class names ({names_key})")
    classes = tuple(c.decode("latin1") if isinstance(c, bytes) else str(c) for c in classes)
    ytr = np.concatenate([y for _, y in parts])
    if max(ytr.max(), yte.max()) >= len(classes) or min(ytr.min(), yte.min()) < 0:
        raise DatasetError(f"{folder}: labels outside the {len(classes)} classes")
    xtr = np.concatenate([x for x, _ in parts])
    return Dataset(name, torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), classes)


def _cifar_folders(name: str, root: Path | None, download_root: Path) -> list[Path]:
    sub = CIFAR[name][0]
    return ([root / sub, root] if root is not None else []) + [download_root / sub]


def to_rgb32(ds: Dataset, name: str) -> Dataset:
    """A 1x28x28 dataset as 3x32x32: zero-padded by 2 pixels, the grey channel repeated."""
    def convert(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()
    return Dataset(name, convert(ds.x_train), ds.y_train, convert(ds.x_test), ds.y_test, ds.classes)


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
    if name == "fashion-mnist-rgb":
        return to_rgb32(load("fashion-mnist", root, download, download_root), name)
    root = Path(root) if root is not None else None
    if root is not None and not root.is_dir():
        raise DatasetError(f"--data-root {root} is not a directory")
    if name in CIFAR:
        return _load_cifar_anywhere(name, root, download, Path(download_root))
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


def _load_cifar_anywhere(name: str, root: Path | None, download: bool, download_root: Path) -> Dataset:
    for folder in _cifar_folders(name, root, download_root):
        found = _load_cifar(name, folder)
        if found is not None:
            return found
    if download:
        import torchvision

        cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
        try:
            cls(str(download_root), train=True, download=True)
        except (OSError, RuntimeError) as err:  # no network, a failed checksum, a full disk
            raise DatasetError(f"downloading {name} into {download_root} failed ({err}); "
                               f"{HOW_TO_GET[name]}") from None
        found = _load_cifar(name, download_root / CIFAR[name][0])
        if found is not None:
            return found
    searched = ", ".join(str(f) for f in _cifar_folders(name, root, download_root))
    raise DatasetError(f"{name} not found (searched {searched}); {HOW_TO_GET[name]}")


@functools.lru_cache(maxsize=2)
def load_cached(name: str, root: str | None = None) -> Dataset:
    """:func:`load`, decompressed once per process: a worker that trains many runs, episodes or
    bench units on the same data reads it once (callers must not modify the tensors)."""
    return load(name, root)
