"""Forget / retain / test data: ImageFolder directories or tensor files, labelled by the model's
class names.

ImageFolder: ``root/<class name>/*.png``. A folder's name is matched to the model's class names by
name (exactly, or after replacing ``/`` with ``_``, since ``T-shirt/top`` cannot be a folder name),
never by its position among the folders: a folder holding only class ``7`` gets label 7.
Tensor file: ``torch.save((x, y))`` or ``{"x": x, "y": y}``; ``x`` uint8 in [0, 255] or float in
[0, 1], shape ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel); ``y`` int labels in the model's
class order. Images must already have the model's size; gray images feed 3-channel models by
repetition, while colour images are refused by 1-channel models (converting would lose data).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from invwnn.models import InputError, Preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass(frozen=True)
class Split:
    """Images ``x`` float32 ``(N, C, H, W)`` in [0, 1] and labels ``y`` int64 ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def counts(self, classes: tuple[str, ...]) -> dict[str, int]:
        c = torch.bincount(self.y, minlength=len(classes)).tolist()
        return {classes[i]: n for i, n in enumerate(c) if n}

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx], self.source)


def folder_name(cls: str) -> str:
    """The folder a class's images are written to (path separators are not allowed in names)."""
    return cls.replace("/", "_").replace("\\", "_")


def class_index(names: list[str], classes: tuple[str, ...], where: str) -> dict[str, int]:
    """Map folder names to class indices by name. Raises naming the first unknown folder."""
    lookup = {c: i for i, c in enumerate(classes)}
    lookup.update({folder_name(c): i for i, c in enumerate(classes) if folder_name(c) not in lookup})
    unknown = [n for n in names if n not in lookup]
    if unknown:
        shown = ", ".join(repr(c) for c in classes[:12]) + (" ..." if len(classes) > 12 else "")
        raise InputError(f"{where}: class folder {unknown[0]!r} is not a class of the model "
                         f"(classes: {shown}); pass --classes if the model file has no names")
    return {n: lookup[n] for n in names}


def _read_image(path: Path, pre: Preprocess) -> np.ndarray:
    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty (zero-byte) file")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "I;16", "I", "F", "1", "LA"):
                n_ch = 1
            elif mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                n_ch = 3
                if mode == "P":  # palette images are gray when every palette entry is
                    rgb = np.asarray(im.convert("RGB"))
                    n_ch = 1 if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() else 3
            else:
                n_ch = 3
            if n_ch > pre.channels:
                raise InputError(f"{path} has {n_ch} channels ({mode}); the model takes {pre.channels}")
            if (im.height, im.width) != pre.size:
                raise InputError(f"{path} is {im.height}x{im.width}; the model takes "
                                 f"{pre.size[0]}x{pre.size[1]} images")
            arr = np.asarray(im.convert("L" if pre.channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path} is not a readable image ({err.__class__.__name__})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if arr.shape[0] != pre.channels:
        arr = np.repeat(arr[:1], pre.channels, axis=0)
    return arr


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def read_folder(root: Path, classes: tuple[str, ...], pre: Preprocess, flag: str) -> Split:
    real_root = root.resolve()
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose = [p for p in entries if p.is_file()]
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in loose):
        raise InputError(f"{flag} {root}: images must sit in class folders (<dir>/<class>/*.png), "
                         f"found {loose[0].name} at the top")
    dirs = [p for p in entries if p.is_dir()]
    for d in dirs:
        if not _inside(d, real_root):
            raise InputError(f"{flag} {root}: {d.name} links outside the folder")
    if not dirs:
        raise InputError(f"{flag} {root} has no class folders (<dir>/<class>/*.png)")
    index = class_index([d.name for d in dirs], classes, f"{flag} {root}")
    xs, ys = [], []
    for d in dirs:
        files = sorted(p for p in d.iterdir() if not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            if not _inside(f, real_root):
                raise InputError(f"{flag}: {f} is a link to a file outside {root}")
            if not f.is_file():
                raise InputError(f"{flag}: {f} is not a regular file (dangling link?)")
            xs.append(_read_image(f, pre))
            ys.append(index[d.name])
    if not xs:
        raise InputError(f"{flag} {root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
    x = torch.from_numpy(np.stack(xs)).float().div_(255.0)
    return Split(x, torch.tensor(ys, dtype=torch.int64), str(root))


def read_tensors(path: Path, classes: tuple[str, ...], pre: Preprocess, flag: str) -> Split:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{flag} {path} is not a tensor file of (x, y) ({first[:120]})") from None
    if isinstance(blob, dict) and "x" in blob and "y" in blob:
        x, y = blob["x"], blob["y"]
    elif isinstance(blob, (tuple, list)) and len(blob) == 2:
        x, y = blob
    else:
        raise InputError(f"{flag} {path} must hold (x, y) or {{'x': x, 'y': y}}")
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise InputError(f"{flag} {path}: x and y must be tensors")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if y.ndim != 1 or x.ndim != 4 or len(x) != len(y) or len(y) == 0:
        raise InputError(f"{flag} {path}: need x (N, C, H, W) and y (N,), N > 0; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise InputError(f"{flag} {path}: float images must be finite and in [0, 1]")
    else:
        raise InputError(f"{flag} {path}: x must be uint8 or float, got {x.dtype}")
    if tuple(x.shape[2:]) != pre.size:
        raise InputError(f"{flag} {path}: images are {x.shape[2]}x{x.shape[3]}; the model takes "
                         f"{pre.size[0]}x{pre.size[1]}")
    if x.shape[1] != pre.channels:
        if x.shape[1] == 1:
            x = x.expand(-1, pre.channels, -1, -1).contiguous()
        else:
            raise InputError(f"{flag} {path}: images have {x.shape[1]} channels; the model takes {pre.channels}")
    if y.is_floating_point() or y.min() < 0 or y.max() >= len(classes):
        raise InputError(f"{flag} {path}: labels must be integers in [0, {len(classes)})")
    return Split(x.contiguous(), y.long(), str(path))


def read(path: str | Path, classes: tuple[str, ...], pre: Preprocess, flag: str = "--forget") -> Split:
    """Read an ImageFolder directory or a tensor file into a :class:`Split`; ``flag`` names the
    option in error messages."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path} does not exist")
    if path.is_dir():
        return read_folder(path, classes, pre, flag)
    return read_tensors(path, classes, pre, flag)


def infer_preprocess(path: str | Path) -> Preprocess | None:
    """Size and channels of the first image in an ImageFolder (for model files that record no
    preprocessing and no flags given); None when nothing can be read."""
    path = Path(path)
    if not path.is_dir():
        return None
    for d in sorted(path.iterdir()):
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and f.stat().st_size:
                    try:
                        with Image.open(f) as im:
                            ch = 1 if im.mode in ("L", "I;16", "I", "F", "1", "LA") else 3
                            return Preprocess((im.height, im.width), ch)
                    except Exception:
                        return None
    return None


def write_folder(root: str | Path, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> None:
    """Write uint8 images ``x`` (N, C, H, W) as ``root/<class>/<i>.png``; built in a temp folder
    then renamed, so ``root`` is complete or absent."""
    import shutil
    import tempfile
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for i, (img, label) in enumerate(zip(x.numpy(), y.tolist())):
            d = tmp / folder_name(classes[label])
            d.mkdir(exist_ok=True)
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            Image.fromarray(arr).save(d / f"{i:06d}.png")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
