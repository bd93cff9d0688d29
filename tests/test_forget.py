"""Forget-data reader: class mapping by name and every bad input as a clear InputError."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from invwnn.forget import folder_name, read
from invwnn.models import InputError, Preprocess

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "3", "4", "5", "6", "7", "8", "9")
PRE = Preprocess((28, 28), 1)


def _png(path, size=(28, 28), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)


def test_labels_come_from_folder_names_not_positions(tmp_path):
    _png(tmp_path / "f" / "7" / "a.png")
    _png(tmp_path / "f" / folder_name("T-shirt/top") / "b.png")
    split = read(tmp_path / "f", CLASSES, PRE)
    assert sorted(split.y.tolist()) == [0, 7]  # "7" is label 7, never 0 or 1 by position
    _png(tmp_path / "g" / "Trouser" / "c.png")
    assert read(tmp_path / "g", CLASSES, PRE).y.tolist() == [1]


def test_gray_images_feed_three_channel_models(tmp_path):
    _png(tmp_path / "f" / "7" / "a.png")
    split = read(tmp_path / "f", CLASSES, Preprocess((28, 28), 3))
    assert split.x.shape == (1, 3, 28, 28) and torch.equal(split.x[0, 0], split.x[0, 2])


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("empty", "no class folders"), ("no_images", "holds no images"),
    ("zero_byte", "zero-byte"), ("corrupt", "not a readable image"), ("wrong_size", "the model takes 28x28"),
    ("wrong_channels", "channels"), ("unknown_class", "not a class of the model"),
    ("escaping_link", "outside"), ("loose", "class folders"),
])
def test_bad_folders_fail_clearly(tmp_path, case, message):
    root = tmp_path / "f"
    root.mkdir()
    if case == "missing":
        root.rmdir()
    elif case == "no_images":
        (root / "7").mkdir()
    elif case == "zero_byte":
        (root / "7").mkdir()
        (root / "7" / "a.png").write_bytes(b"")
    elif case == "corrupt":
        (root / "7").mkdir()
        (root / "7" / "a.png").write_bytes(b"\x89PNG not really")
    elif case == "wrong_size":
        _png(root / "7" / "a.png", size=(32, 32))
    elif case == "wrong_channels":
        _png(root / "7" / "a.png", mode="RGB")
    elif case == "unknown_class":
        _png(root / "Sneakers" / "a.png")
    elif case == "escaping_link":
        _png(tmp_path / "elsewhere" / "secret.png")
        (root / "7").mkdir()
        os.symlink(tmp_path / "elsewhere" / "secret.png", root / "7" / "a.png")
    elif case == "loose":
        _png(root / "a.png")
    with pytest.raises(InputError, match=message):
        read(root, CLASSES, PRE)


def test_tensor_files(tmp_path):
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    torch.save((x, torch.tensor([0, 1, 2, 3, 9])), tmp_path / "ok.pt")
    split = read(tmp_path / "ok.pt", CLASSES, PRE)
    assert split.x.dtype == torch.float32 and split.x.max() <= 1 and split.y.tolist() == [0, 1, 2, 3, 9]
    torch.save({"x": x, "y": torch.tensor([0, 1, 2, 3, 10])}, tmp_path / "bad_label.pt")
    with pytest.raises(InputError, match="labels must be integers"):
        read(tmp_path / "bad_label.pt", CLASSES, PRE)
    torch.save((x[:, :, :20], torch.zeros(5, dtype=torch.long)), tmp_path / "small.pt")
    with pytest.raises(InputError, match="20x28"):
        read(tmp_path / "small.pt", CLASSES, PRE)
