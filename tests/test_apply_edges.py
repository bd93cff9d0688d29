"""What a careless user meets: inputs checked in the order the command reads (the model, each folder,
then preprocessing), preprocessing that was assumed said so and blamed where it came from, a forget
set the model does not know warned about, and errors that say what to do instead."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from invwnn.inputs import splits as forget_io
from invwnn.inputs import models
from invwnn.inputs.preprocess import Preprocess
from invwnn.unlearn.apply import misfit_warning
from invwnn.cli.apply import apply

CLASSES = tuple(str(i) for i in range(10))


class AnySize(nn.Module):
    """A 3-channel convolution and global pooling: accepts images of any size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def _images(root, n: int, size: int, channels: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    forget_io.write_folder(root, x, torch.arange(n) % 10, CLASSES)
    return str(root)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A TorchScript model (3 input channels, any size, no preprocessing recorded)."""
    out = tmp_path_factory.mktemp("edges")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(AnySize().eval()).save(str(out / "m.pt"))
    return out


def _run(args):
    return CliRunner().invoke(apply, args + ["--quiet"])


def test_guessed_preprocessing_is_said_and_names_the_forget_folder(scripted, tmp_path):
    forget = _images(tmp_path / "forget", 20, 28, 3)  # 28x28 for a model that may take any size
    r = _run(["--model", str(scripted / "m.pt"), "--forget", forget, "--method", "neggrad", "--epochs", "1",
              "--out", str(tmp_path / "o.pt")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("warning: the model file records no preprocessing"))
    assert f"input size 28x28 from the first image of --forget {forget}" in line
    assert f"3 channel(s) from the first image of --forget {forget}" in line
    assert "no normalisation" in line and "--size HxW" in line and "--mean" in line
    report = json.loads((tmp_path / "o.json").read_text())
    assert any("input size 28x28" in w for w in report["warnings"])


def test_a_model_that_refuses_the_guessed_input_says_where_it_came_from(scripted, tmp_path):
    forget = _images(tmp_path / "forget", 20, 28, 1)  # gray images for a model that takes RGB
    r = _run(["--model", str(scripted / "m.pt"), "--forget", forget])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "does not accept (1, 28, 28) inputs" in r.output
    assert f"1 channel(s) from the first image of --forget {forget}" in r.output and "--channels C" in r.output


def test_preprocessing_given_by_flags_draws_no_warning(scripted, tmp_path):
    forget = _images(tmp_path / "forget", 20, 32, 3)
    r = _run(["--model", str(scripted / "m.pt"), "--forget", forget, "--method", "neggrad", "--epochs", "1",
              "--size", "32x32", "--channels", "3", "--mean", "0.5", "--std", "0.25", "--out", str(tmp_path / "o.pt")])
    assert r.exit_code == 0, r.output
    assert "records no preprocessing" not in r.output


def test_a_retain_folder_at_another_size_blames_the_guess_not_the_folder(scripted, tmp_path):
    forget = _images(tmp_path / "forget", 20, 28, 3)
    retain = _images(tmp_path / "retain", 20, 32, 3, seed=1)
    r = _run(["--model", str(scripted / "m.pt"), "--forget", forget, "--retain", retain, "--method", "neggrad+"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "is 32x32; the model takes 28x28" in r.output
    assert f"input size 28x28 from the first image of --forget {forget}" in r.output and "--size HxW" in r.output


@pytest.mark.parametrize("case", ["missing", "empty", "no-images"])
def test_a_bad_forget_folder_is_named_before_preprocessing(case, tmp_path):
    """Safetensors weights record no preprocessing: the folder's fault must still be the message."""
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "w.safetensors")
    forget = tmp_path / "forget"
    if case != "missing":
        forget.mkdir()
    if case == "no-images":
        (forget / "0").mkdir()
        (forget / "0" / "notes.txt").write_text("no image")
    r = _run(["--model", str(tmp_path / "w.safetensors"), "--arch", "torchvision:resnet18:num_classes=10",
              "--forget", str(forget)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"--forget {forget}" in r.output and "preprocessing" not in r.output
    expected = {"missing": "does not exist", "empty": "no class folders", "no-images": "holds no images"}[case]
    assert expected in r.output
    assert not list(tmp_path.glob("w.unlearned*"))


def test_a_missing_model_is_named_before_a_missing_folder(tmp_path):
    r = _run(["--model", str(tmp_path / "nope.pt"), "--forget", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "model file" in r.output and "nope.pt" in r.output


def test_a_pickle_of_a_class_from_the_saving_script_says_what_to_save_instead(tmp_path):
    script = ("import torch\nfrom torch import nn\n"
              "class TinyViT(nn.Module):\n"
              "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(784, 10)\n"
              "    def forward(self, x):\n        return self.fc(x.flatten(1))\n"
              f"torch.save(TinyViT(), {str(tmp_path / 'vit.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    forget = _images(tmp_path / "forget", 10, 28, 1)
    r = _run(["--model", str(tmp_path / "vit.pt"), "--forget", forget, "--trust-pickle"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "TinyViT" in r.output and "the script that saved it" in r.output
    assert "torch.jit.script" in r.output and "torch.export" in r.output


def test_a_modified_torchvision_arch_in_safetensors_points_to_torchscript(tmp_path):
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # a 1-channel ResNet, as people make them
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    forget = _images(tmp_path / "forget", 10, 28, 1)
    r = _run(["--model", str(tmp_path / "w.safetensors"), "--arch", "torchvision:resnet18:num_classes=10",
              "--forget", forget])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "conv1.weight is float32 (64, 1, 7, 7)" in r.output and "TorchScript or torch.export" in r.output


def test_torchscript_load_and_save_print_no_deprecation_noise(scripted, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = models.load(scripted / "m.pt", preprocess=Preprocess((8, 8), 3))
        models.save(loaded, tmp_path / "again.pt")
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert (tmp_path / "again.pt").stat().st_size > 0


def test_misfit_warning_names_the_likely_cause():
    assert misfit_warning({"UA": 2.0, "RA": 99.0, "TA": 88.0}, 10) is None  # knows its training images
    text = misfit_warning({"UA": 40.0, "RA": 99.0, "TA": 88.0}, 10)
    assert "60.0% of the forget images right but 99.0% of the retain images" in text
    assert "--size, --channels, --mean/--std" in text
    guessed = misfit_warning({"UA": 40.0, "TA": 88.0}, 10, "the model file records no preprocessing, ...")
    assert "of the test images" in guessed and "likely cause: the model file records no preprocessing" in guessed
    assert "near chance (10.0%)" in misfit_warning({"UA": 88.0}, 10)
    assert misfit_warning({"UA": 30.0}, 10) is None  # nothing to compare with, far above chance
