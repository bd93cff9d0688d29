"""Model files: own format (weights_only), torch.export and TorchScript torchvision models, guarded
pickle, and bad files, through the library and the ``apply`` command."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from click.testing import CliRunner

from _apply_fixtures import tiny_original
from invwnn import models
from invwnn.apply_cli import apply
from invwnn.forget import write_folder

FAST = ["--rewinder", "linear", "--iterations", "1", "--snapshots", "3", "--every", "1",
        "--warmup", "0", "--quiet"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_original(tmp_path_factory.getbasetemp())


def _invoke(*args):
    return CliRunner().invoke(apply, list(args))


def test_own_format_is_plain_data(root):
    blob = torch.load(root / "model.pt", weights_only=True)
    assert blob["format"] == models.FORMAT and blob["classes"][0] == "T-shirt/top"
    loaded = models.load(root / "model.pt")
    assert loaded.preprocess.size == (28, 28) and loaded.kinds()["net.1.weight"] == "norm"


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """squeezenet1_1 (random init, no download) as .pt2 and TorchScript, with an index-named
    forget folder of gray 28x28 images."""
    d = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=10).eval()
    x = torch.rand(2, 3, 28, 28)
    ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(ep, d / "m.pt2")
    torch.jit.save(torch.jit.script(net), d / "m.ts")
    imgs = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    write_folder(d / "forget", imgs, torch.tensor([3, 3, 7, 7, 7, 3]), tuple(str(i) for i in range(10)))
    return d


@pytest.mark.parametrize("name", ["m.pt2", "m.ts"])
def test_torchvision_archives_verbatim(torchvision_files, name):
    d = torchvision_files
    r = _invoke("--model", str(d / name), "--forget", str(d / "forget"), "--channels", "3", *FAST)
    assert r.exit_code == 0, r.output
    out = d / name.replace(".", ".unlearned.")
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["data"]["forget"]["classes"] == {"3": 3, "7": 3}
    loaded = models.load(out)  # preprocessing and names now travel inside the archive
    assert loaded.preprocess.channels == 3 and loaded.classes[7] == "7"
    kinds = loaded.kinds()
    assert kinds["net.features.0.weight"] == "conv" and kinds["net.features.0.bias"] == "bias"
    before = models.load(d / name, preprocess=loaded.preprocess)
    assert not torch.equal(dict(before.net.named_parameters())["features.0.weight"],
                           dict(loaded.net.named_parameters())["features.0.weight"])


def test_pickle_needs_the_flag(root, tmp_path):
    loaded = models.load(root / "model.pt")
    torch.save(loaded.net, tmp_path / "full.pt")
    r = _invoke("--model", str(tmp_path / "full.pt"), "--forget", str(root / "forget"), *FAST)
    assert r.exit_code == 2 and "--trust-pickle" in r.output and not (tmp_path / "full.unlearned.pt").exists()
    r = _invoke("--model", str(tmp_path / "full.pt"), "--forget", str(root / "forget"), "--trust-pickle",
                "--classes", ",".join(loaded.classes).replace("T-shirt/top", "T-shirt_top"), *FAST)
    assert r.exit_code == 0, r.output


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: proof of code execution if the file appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_does_not_run_its_payload_without_the_flag(root, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    r = _invoke("--model", str(tmp_path / "evil.pt"), "--forget", str(root / "forget"), *FAST)
    assert r.exit_code == 2 and "--trust-pickle" in r.output
    assert not marker.exists()
    assert not (tmp_path / "evil.unlearned.pt").exists()


@pytest.mark.parametrize("case", ["text", "dict", "nan", "version"])
def test_bad_model_files(root, tmp_path, case):
    path = tmp_path / "bad.pt"
    if case == "text":
        path.write_text("not a model")
    elif case == "dict":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        blob = torch.load(root / "model.pt", weights_only=True)
        if case == "nan":
            blob["state_dict"]["0.weight"][0] = float("nan")
        else:
            blob["format_version"] = 99
        torch.save(blob, path)
    r = _invoke("--model", str(path), "--forget", str(root / "forget"), *FAST)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("Error:") and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]
