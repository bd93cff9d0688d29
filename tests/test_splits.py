"""Forget/retain/test readers (invwnn.inputs.splits): class mapping by name and every bad input as a
clear InputError."""
from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from click.testing import CliRunner

from invwnn.cli.apply import apply
from invwnn.inputs.splits import folder_name, read
from invwnn.inputs.models import save_own
from invwnn.inputs.preprocess import Preprocess
from invwnn.errors import InputError
from trajgen import nets
from trajgen.spec import ArchSpec

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


def _png_header(path, height, width):
    """A PNG that declares ``height`` x ``width`` pixels and holds none: its header alone."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("empty", "no class folders"), ("no_images", "holds no images"),
    ("zero_byte", "zero-byte"), ("corrupt", "not a readable image"), ("wrong_size", "the model takes 28x28"),
    ("wrong_channels", "channels"), ("unknown_class", "not a class of the model"),
    ("escaping_link", "outside"), ("loose", "class folders"),
    ("truncated", "a.png is not a readable image (OSError)"),
    ("sixteen_bit", "I;16 pixels"),  # converting to 8 bits would clip 40000 to 255: wrong data
    ("float_pixels", "F pixels"),
    ("two_frames", "holds 2 frames"),
    ("huge_header", "is 9000x9000"),  # refused from its header: the missing pixels are never decoded
    ("bomb", "DecompressionBombError"),
    ("class_link_outside", "8 links outside the folder"),
    ("class_link_twice", "7 and 8 are the same folder"),  # 8 -> 7 would label 7's images twice
    ("dangling_class_link", "broken or looping link"),  # was skipped silently
    ("file_link_loop", "broken or looping link"),  # was a RuntimeError with a traceback
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
    elif case == "truncated":
        _png(root / "7" / "a.png")
        data = (root / "7" / "a.png").read_bytes()
        (root / "7" / "a.png").write_bytes(data[: len(data) // 2])
    elif case == "sixteen_bit":
        (root / "7").mkdir()
        Image.fromarray(np.full((28, 28), 40000, np.uint16)).save(root / "7" / "a.png")
    elif case == "float_pixels":
        (root / "7").mkdir()
        Image.fromarray(np.full((28, 28), 0.5, np.float32)).save(root / "7" / "a.tif")
    elif case == "two_frames":
        (root / "7").mkdir()
        frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (5, 200)]
        frames[0].save(root / "7" / "a.tif", save_all=True, append_images=frames[1:])
    elif case == "huge_header":
        _png_header(root / "7" / "a.png", 9000, 9000)
    elif case == "bomb":
        _png_header(root / "7" / "a.png", 20000, 20000)
    elif case == "class_link_outside":
        _png(tmp_path / "elsewhere" / "x.png")
        _png(root / "7" / "a.png")
        os.symlink(tmp_path / "elsewhere", root / "8")
    elif case == "class_link_twice":
        _png(root / "7" / "a.png")
        os.symlink(root / "7", root / "8")
    elif case == "dangling_class_link":
        _png(root / "7" / "a.png")
        os.symlink(tmp_path / "nowhere", root / "8")
    elif case == "file_link_loop":
        _png(root / "7" / "ok.png")
        os.symlink(root / "7" / "b.png", root / "7" / "a.png")
        os.symlink(root / "7" / "a.png", root / "7" / "b.png")
    with pytest.raises(InputError, match=re.escape(message)):
        read(root, CLASSES, PRE)


def test_links_inside_the_folder_are_followed(tmp_path):
    _png(tmp_path / "f" / ".store" / "a.png")
    os.symlink(tmp_path / "f" / ".store", tmp_path / "f" / "7")  # a hidden folder, linked by its class name
    (tmp_path / "f" / "README.txt").write_text("not an image: skipped")
    assert read(tmp_path / "f", CLASSES, PRE).y.tolist() == [7]


MANY = tuple(f"c{i:04d}" for i in range(3000))


def _many_empty_class_folders(root):
    for name in MANY:
        (root / name).mkdir(parents=True)


def test_thousands_of_empty_class_folders(tmp_path):
    """3,000 class folders: empty ones are skipped, the one image is labelled by its folder's name,
    and no images at all is one clear error; all of it in well under a second per read."""
    root = tmp_path / "f"
    _many_empty_class_folders(root)
    start = time.perf_counter()
    with pytest.raises(InputError, match="holds no images"):
        read(root, MANY, PRE)
    _png(root / "c2718" / "a.png")
    split = read(root, MANY, PRE)
    assert split.y.tolist() == [2718] and split.counts(MANY) == {"c2718": 1}
    with pytest.raises(InputError, match="class folder 'c0000' is not a class of the model"):
        read(root, CLASSES, PRE)
    assert time.perf_counter() - start < 5


@pytest.fixture
def many_class_model(tmp_path):
    """A random-init MLP with 3,000 classes in the project's model format (no training needed)."""
    arch = ArchSpec("mlp", 4, 1, "relu")
    path = tmp_path / "m.pt"
    save_own(path, nets.build(arch, PRE.shape, len(MANY)), arch, MANY, PRE)
    return path


def test_apply_on_thousands_of_empty_class_folders(tmp_path, many_class_model):
    root = tmp_path / "forget"
    _many_empty_class_folders(root)
    args = ["--model", str(many_class_model), "--forget", str(root), "--rewinder", "linear", "--iterations",
            "1", "--snapshots", "3", "--every", "1", "--quiet"]
    r = CliRunner().invoke(apply, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("Error: --forget") and "holds no images" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forget", "m.pt"]  # nothing written
    _png(root / "c2718" / "a.png")
    r = CliRunner().invoke(apply, args)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m.unlearned.json").read_text())
    assert report["data"]["forget"]["classes"] == {"c2718": 1}


def test_apply_on_a_looping_link_is_one_line(tmp_path, many_class_model):
    root = tmp_path / "forget"
    _png(root / "c0007" / "ok.png")
    os.symlink(root / "c0007" / "b.png", root / "c0007" / "a.png")
    os.symlink(root / "c0007" / "a.png", root / "c0007" / "b.png")
    r = CliRunner().invoke(apply, ["--model", str(many_class_model), "--forget", str(root), "--quiet"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "broken or looping link" in r.output, r.output


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
