"""Model files: own format (weights_only), torch.export and TorchScript torchvision models, guarded
pickle, and bad files, through the library and the ``apply`` command."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from click.testing import CliRunner

from _apply_fixtures import tiny_original
from invwnn.inputs import models
from invwnn.cli.apply import apply
from invwnn.inputs.splits import write_folder

FAST = ["--rewinder", "linear", "--iterations", "1", "--snapshots", "3", "--every", "1",
        "--quiet"]


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


def _corrupt_own_file(blob: dict, case: str) -> None:
    """Damage a project-format model file's contents in place, as ``case`` says."""
    sd = blob["state_dict"]
    if case == "nan":
        sd["0.weight"][0] = float("nan")
    elif case == "version":
        blob["format_version"] = 99
    elif case == "shape":
        sd["0.weight"] = sd["0.weight"][:, :, :2]
    elif case == "arch":  # the weights of a wider net than the recorded architecture
        blob["arch"]["width"] += 1
    elif case == "missing":
        del sd["4.bias"]
    elif case == "extra":
        sd["head.weight"] = torch.zeros(3)
    elif case == "dtype":
        sd["0.weight"] = sd["0.weight"].double()  # load_state_dict would cast it silently
    elif case == "int_buffer":
        sd["1.num_batches_tracked"] = sd["1.num_batches_tracked"].float()
    elif case == "not_tensor":
        sd["0.bias"] = [0.0] * len(sd["0.bias"])
    elif case == "no_arch":
        del blob["arch"]
    elif case == "mnemonic":
        blob["mnemonic"] = torch.zeros(3, 28, 28)


@pytest.mark.parametrize("case, needle", [
    ("text", "not a model file (neither a zip archive nor a pickle, nor safetensors)"), ("empty", "zero bytes"),
    ("truncated", "truncated"),
    ("dict", "not a model"), ("nan", "not finite"), ("version", "format version 99"),
    ("shape", "0.weight is float32 (8, 1, 2, 3); its recorded architecture needs float32 (8, 1, 3, 3)"),
    ("arch", "needs float32 (9, 1, 3, 3)"), ("missing", "lacks '4.bias'"), ("extra", "holds 'head.weight'"),
    ("dtype", "0.weight is float64"), ("int_buffer", "num_batches_tracked is float32 (); its recorded "
                                                     "architecture needs int64 ()"),
    ("not_tensor", "is a list, not a tensor"), ("no_arch", "arch, classes or preprocess entry"),
    ("mnemonic", "mnemonic codes"),
])
def test_bad_model_files(root, tmp_path, case, needle):
    path = tmp_path / "bad.pt"
    if case == "text":
        path.write_text("not a model")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes((root / "model.pt").read_bytes()[:-200])
    elif case == "dict":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        blob = torch.load(root / "model.pt", weights_only=True)
        _corrupt_own_file(blob, case)
        torch.save(blob, path)
    r = _invoke("--model", str(path), "--forget", str(root / "forget"), *FAST)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("Error:") and "Traceback" not in r.output
    assert needle in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]
