"""Forget / retain / test data: ImageFolder directories or tensor files, labelled by the model's
class names.

ImageFolder: ``root/<class name>/*.png``. A folder's name is matched to the model's class names by
name (exactly, or after replacing ``/`` with ``_``, since ``T-shirt/top`` cannot be a folder name),
never by its position among the folders: a folder holding only class ``7`` gets label 7. Skipped:
hidden entries, loose files that are not images, files of other extensions inside class folders,
and empty class folders (they add nothing). Refused, with the offending path: unknown class names,
loose images, links that dangle, loop or lead outside ``root``, two names for one folder, empty,
unreadable or multi-frame files, pixels deeper than 8 bits, and wrong sizes or channel counts.
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

from invwnn.inputs.preprocess import Preprocess
from invwnn.errors import InputError, first_line

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


def _channels(im: Image.Image) -> int:
    """1 for gray images (palette images whose every entry is gray included), else 3."""
    if im.mode in ("L", "1", "LA"):
        return 1
    if im.mode == "P":
        rgb = np.asarray(im.convert("RGB"))
        return 1 if (rgb == rgb[..., :1]).all() else 3
    return 3


def _check_header(im: Image.Image, path: Path, pre: Preprocess) -> None:
    """Refuse what the header already tells, before any pixel is decoded (a huge image never is).
    Deeper than 8-bit pixels would be clipped by the conversion to 8 bits, and a multi-frame file
    read as its first frame: both silently wrong data, so both are refused."""
    if im.mode.startswith("I") or im.mode == "F":
        raise InputError(f"{path} has {im.mode} pixels (16-bit, 32-bit or float); the reader takes "
                         "8-bit images: convert it, or pass a tensor file of floats in [0, 1]")
    if getattr(im, "n_frames", 1) > 1:
        raise InputError(f"{path} holds {im.n_frames} frames; give one image per file")
    if (im.height, im.width) != pre.size:
        raise InputError(f"{path} is {im.height}x{im.width}; the model takes "
                         f"{pre.size[0]}x{pre.size[1]} images")


def _read_image(path: Path, pre: Preprocess) -> np.ndarray:
    """One image file as uint8 ``(pre.channels, H, W)``."""
    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty (zero-byte) file")
    try:
        with Image.open(path) as im:
            _check_header(im, path, pre)
            im.load()
            n_ch = _channels(im)
            if n_ch > pre.channels:
                raise InputError(f"{path} has {n_ch} channels ({im.mode}); the model takes {pre.channels}")
            arr = np.asarray(im.convert("L" if pre.channels == 1 else "RGB"), dtype=np.uint8)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path} is not a readable image ({err.__class__.__name__})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape[0] != pre.channels:
        arr = np.repeat(arr[:1], pre.channels, axis=0)
    return arr


def _real(path: Path, flag: str) -> Path:
    """Where ``path`` leads, links followed; a dangling or looping link is an error, not a skip."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        raise InputError(f"{flag}: {path} is a broken or looping link") from None


def _class_folders(root: Path, flag: str) -> list[Path]:
    """The class folders of ``root``, links to folders inside it included. Hidden entries and loose
    non-image files are skipped; loose images, links leading outside ``root``, and two names for
    one folder (its images would get two labels) are errors."""
    real_root = root.resolve()
    dirs, seen = [], {}
    for p in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        real = _real(p, flag)
        if real.is_file():
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                raise InputError(f"{flag} {root}: images must sit in class folders (<dir>/<class>/*.png), "
                                 f"found {p.name} at the top")
            continue
        if not real.is_relative_to(real_root):
            raise InputError(f"{flag} {root}: {p.name} links outside the folder")
        if real in seen:
            raise InputError(f"{flag} {root}: {seen[real]} and {p.name} are the same folder (a link); "
                             "its images would get two labels")
        seen[real] = p.name
        dirs.append(p)
    if not dirs:
        raise InputError(f"{flag} {root} has no class folders (<dir>/<class>/*.png)")
    return dirs


def read_folder(root: Path, classes: tuple[str, ...], pre: Preprocess, flag: str) -> Split:
    real_root = root.resolve()
    dirs = _class_folders(root, flag)
    index = class_index([d.name for d in dirs], classes, f"{flag} {root}")
    xs, ys = [], []
    for d in dirs:
        files = sorted(p for p in d.iterdir() if not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            real = _real(f, flag)
            if not real.is_relative_to(real_root):
                raise InputError(f"{flag}: {f} is a link to a file outside {root}")
            if not real.is_file():
                raise InputError(f"{flag}: {f} is not a regular file")
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
        raise InputError(f"{flag} {path} is not a tensor file of (x, y) ({first_line(err, 120)})") from None
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


def check_source(path: str | Path, flag: str = "--forget") -> None:
    """Refuse, in one line, a split that is missing, or a folder with no class folders or no images,
    before anything else is read: such a split is the user's slip, whatever the model file says."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path} does not exist")
    if path.is_dir():
        dirs = _class_folders(path, flag)
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
                   for d in dirs for f in d.iterdir()):
            raise InputError(f"{flag} {path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS[:3])}, "
                             "... in its class folders)")


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
