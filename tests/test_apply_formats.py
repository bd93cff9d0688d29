"""Every method on every model format ``invwnn apply`` reads, and models as people save them:
an exported program with a fixed batch size (run as micro-batches) and safetensors weights of a
torchvision architecture (``--arch torchvision:NAME[:kwargs]``)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from _apply_fixtures import tiny_original, unseen_lenet
from invwnn import errors
from invwnn.inputs import splits as forget_io
from invwnn.audit import metrics
from invwnn.inputs import models
from invwnn.unlearn.apply import Inputs, unlearn
from invwnn.cli.apply import apply
from invwnn.unlearn.methods import REGISTRY
from trajgen import data as datasets

# few steps of each method: enough to run its whole path, not to unlearn well
FEW = {
    "invwnn": {"iterations": 1, "snapshots": 3, "every": 1, "batch_size": 32},
    "invwnn+": {"iterations": 1, "snapshots": 3, "repair_steps": 1, "batch_size": 32,
                "repair_batch_size": 32, "mask": "saliency:0.5"},
    "unsir": {"noise_size": 8, "noise_steps": 2, "retain_per_class": 4, "batch_size": 32},
    "fisher": {"samples": 16},
    "scrub": {"epochs": 1.0, "batch_size": 32},
    "boundary-shrink": {"epochs": 1.0, "batch_size": 32},
    **{m: {"epochs": 1.0, "batch_size": 32} for m in ("retrain", "finetune", "neggrad", "neggrad+",
                                                      "random-label", "salun", "task-vector", "l1-sparse", "regun")},
    "mnemonic": {},
    "ssd": {"samples": 16, "batch_size": 32},
    "amun": {"epochs": 1.0, "batch_size": 32, "attack_steps": 3, "attack_rounds": 2},
}
CANNOT_RUN = {"retrain": "architecture", "mnemonic": "mnemonic codes"}  # neither file gives them


pytestmark = pytest.mark.usefixtures("one_thread")


def _tensor_splits(out, x: torch.Tensor, y: torch.Tensor, sizes: dict[str, int]) -> dict[str, str]:
    """Write consecutive slices of ``(x, y)`` as tensor files ``out/<split>.pt``; their paths."""
    paths, start = {}, 0
    for name, n in sizes.items():
        torch.save({"x": x[start: start + n], "y": y[start: start + n]}, out / f"{name}.pt")
        paths[name], start = str(out / f"{name}.pt"), start + n
    return paths


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """name -> (model file, {forget, retain, test} tensor files, its parameters by name): the unseen
    LeNet as TorchScript (a subset of its splits), and a MobileNetV3-small at width 0.25 exported
    with a fixed batch of 24 (so every method's batches run as micro-batches, the last one padded),
    Fashion-MNIST gray images as its RGB input."""
    base = tmp_path_factory.getbasetemp()
    lenet = unseen_lenet(base)
    out = tmp_path_factory.mktemp("formats")
    splits = {}
    for name, n in (("forget", 64), ("retain", 192), ("test", 128)):
        blob = torch.load(lenet / f"{name}.pt", weights_only=True)
        torch.save({"x": blob["x"][:n], "y": blob["y"][:n]}, out / f"ts_{name}.pt")
        splits[name] = str(out / f"ts_{name}.pt")
    files = {"torchscript": (str(lenet / "lenet.pt"), splits, torch.jit.load(str(lenet / "lenet.pt")))}
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=0.25).eval()
    torch.export.save(torch.export.export(net, (torch.rand(24, 3, 28, 28),)), out / "mobilenet.pt2")
    ds = datasets.load("fashion-mnist")
    (out / "tv").mkdir()
    files["export"] = (str(out / "mobilenet.pt2"), _tensor_splits(
        out / "tv", ds.x_test[:384], ds.y_test[:384], {"forget": 64, "retain": 192, "test": 128}), net)
    return {k: (path, splits, {n: p.detach().clone() for n, p in net.named_parameters()})
            for k, (path, splits, net) in files.items()}


@pytest.mark.parametrize("method", sorted(REGISTRY))
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_every_method_runs_on_every_format(formats, tmp_path, fmt, method):
    model, splits, b = formats[fmt]
    shape = {"size": (28, 28), "channels": 1} if fmt == "torchscript" else {}  # export: from the program
    inputs = Inputs(model, splits["forget"], splits["retain"], splits["test"], **shape)
    out = tmp_path / f"m.unlearned{'.pt2' if fmt == 'export' else '.pt'}"
    if method in CANNOT_RUN:
        with pytest.raises(errors.InputError, match=CANNOT_RUN[method]):
            unlearn(inputs, method, FEW[method], out=str(out), rewinder="linear", max_drop=None)
        assert list(tmp_path.iterdir()) == []  # nothing half-written
        return
    report = unlearn(inputs, method, FEW[method], out=str(out), rewinder="linear", max_drop=None)
    assert report["stop_reason"] == "budget" and report["model"]["source"] == fmt
    assert json.loads(out.with_suffix(".json").read_text())["method"] == method
    assert all(torch.isfinite(torch.tensor(v)) for v in report["after"].values())
    if fmt == "export":
        assert report["model"]["micro_batch"] == 24 and report["inexact"] == []  # eval-mode batch norm
    a = {k: v.detach() for k, v in models.load(out).net.named_parameters()}
    assert set(a) == set(b) and all(torch.isfinite(v).all() for v in a.values())
    assert any(not torch.equal(a[k], b[k]) for k in a), "the written weights are the original's"


# ---------------------------------------------------------------------------------------------
# a fixed-batch exported program


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_original(tmp_path_factory.getbasetemp())


def _export_fixed(tiny, path, batch: int, train_mode: bool = False, max_batch: int | None = None) -> torch.nn.Module:
    """The tiny original's CNN (conv-BatchNorm blocks) exported the way torch.export's documentation
    shows it: one example batch, no dynamic shapes (with ``max_batch``: a batch dimension dynamic
    up to that size). Returns the module it was exported from."""
    loaded = models.load(tiny / "model.pt")
    net = loaded.net.train(train_mode)
    dynamic = ({0: torch.export.Dim("batch", max=max_batch)},) if max_batch else None
    example = (torch.rand(batch, *loaded.preprocess.shape),)
    torch.export.save(torch.export.export(net, example, dynamic_shapes=dynamic), path)
    return loaded.net.eval()


@pytest.mark.parametrize("batch, max_batch, refused, calls", [(8, None, 5, [8, 8, 8]), (4, 16, 17, [16, 16, 5])])
def test_bounded_batch_program_is_refused_by_torch_and_runs_here_exactly(tiny, tmp_path, batch, max_batch,
                                                                           refused, calls):
    original = _export_fixed(tiny, tmp_path / "m.pt2", batch=batch, max_batch=max_batch)
    with pytest.raises(Exception, match="Guard failed"):  # what the bare program does with another count
        torch.export.load(str(tmp_path / "m.pt2")).module()(torch.rand(refused, 1, 28, 28))
    loaded = models.load(tmp_path / "m.pt2", preprocess=models.PreprocessHint())
    size = max_batch or batch
    assert loaded.micro_batch == size and loaded.preprocess.shape == (1, 28, 28)  # from the program
    assert loaded.inexact == ()  # eval-mode batch norm: micro-batches change nothing
    assert all(p.is_leaf and p.requires_grad for p in loaded.net.parameters())
    forget = forget_io.read(tiny / "forget", loaded_classes(tiny), loaded.preprocess)
    x, y = forget.x[: 2 * size + 5], forget.y[: 2 * size + 5]  # 2 full micro-batches and a short one
    seen = []
    hook = loaded.net.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    out = loaded.model(x)
    assert seen == calls  # a fixed size pads the short one; a range takes it as it is
    seen.clear()
    loaded.model(x[:5])
    assert seen == [calls[-1]]  # a batch the program takes runs in one call
    hook.remove()
    assert out.shape == (len(x), 10)
    torch.testing.assert_close(out, original(x), rtol=1e-4, atol=1e-5)
    # a loss over the whole batch back-propagates through every micro-batch: same gradient
    F.cross_entropy(out, y).backward()
    F.cross_entropy(original(x), y).backward()
    mine = dict(loaded.net.named_parameters())
    for name, p in original.named_parameters():
        torch.testing.assert_close(mine[name].grad, p.grad, rtol=1e-3, atol=1e-6)


def loaded_classes(tiny) -> tuple[str, ...]:
    return models.load(tiny / "model.pt").classes


@pytest.mark.learning
def test_unlearning_from_a_fixed_batch_program(tiny, tmp_path):
    _export_fixed(tiny, tmp_path / "m.pt2", batch=8)
    r = CliRunner().invoke(apply, ["--model", str(tmp_path / "m.pt2"), "--classes", ",".join(loaded_classes(tiny)),
                                   "--forget", str(tiny / "forget"), "--retain", str(tiny / "retain"),
                                   "--method", "neggrad", "--lr", "0.02", "--epochs", "3",
                                   "--max-drop", "off", "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m.unlearned.json").read_text())
    assert report["model"]["micro_batch"] == 8 and report["inexact"] == []
    assert report["after"]["UA"] > report["before"]["UA"] + 10  # forgetting happened
    out = models.load(tmp_path / "m.unlearned.pt2")  # reloads, still fixed-batch, self-describing
    assert out.micro_batch == 8 and out.classes == loaded_classes(tiny)
    forget = forget_io.read(tiny / "forget", out.classes, out.preprocess)
    ua = 100 - metrics.accuracy(out.model, forget.x, forget.y)
    assert ua == pytest.approx(report["after"]["UA"], abs=1e-6)  # the file holds the reported weights
    original = models.load(tmp_path / "m.pt2", preprocess=out.preprocess)
    assert not torch.equal(original.net.state_dict()["0.weight"], out.net.state_dict()["0.weight"])


def test_training_mode_batch_norm_is_reported_inexact(tiny, tmp_path):
    _export_fixed(tiny, tmp_path / "m.pt2", batch=8, train_mode=True)
    r = CliRunner().invoke(apply, ["--model", str(tmp_path / "m.pt2"), "--forget", str(tiny / "forget"),
                                   "--retain", str(tiny / "retain"), "--method", "finetune",
                                   "--epochs", "1", "--max-drop", "off", "--classes",
                                   ",".join(loaded_classes(tiny))])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m.unlearned.json").read_text())
    assert len(report["inexact"]) == 2 and "fixed at 8" in report["inexact"][1]
    assert "per micro-batch, padding included" in report["inexact"][1]
    assert "inexact: " in r.output and "exported in training mode" in r.output
    before = models.load(tmp_path / "m.pt2", preprocess=models.PreprocessHint())
    after = models.load(tmp_path / "m.unlearned.pt2")
    # loading probes the model once: that must not move the running statistics
    assert torch.equal(before.net.state_dict()["1.running_mean"],
                       torch.export.load(str(tmp_path / "m.pt2")).state_dict["1.running_mean"])
    # training-mode batch norm updated its running statistics, and they were written
    assert not torch.equal(before.net.state_dict()["1.running_mean"], after.net.state_dict()["1.running_mean"])


# ---------------------------------------------------------------------------------------------
# safetensors with a torchvision architecture


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A torchvision ResNet-18 (10 classes) fitted to 96 Fashion-MNIST images at 16x16 (gray, so
    repeated into its 3 channels), its state dict as safetensors, the first 32 images to forget."""
    out = tmp_path_factory.mktemp("resnet")
    ds = datasets.load("fashion-mnist")
    x = F.interpolate(datasets.to_float(ds.x_train[:160]), size=16, mode="area")
    x8 = (x * 255).round().to(torch.uint8)
    y = ds.y_train[:160]
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xf = x8[:96].float().div(255).expand(-1, 3, -1, -1)
    for _ in range(12):
        for b in torch.randperm(96).split(32):
            opt.zero_grad()
            F.cross_entropy(net(xf[b]), y[b]).backward()
            opt.step()
    for m in net.modules():  # running statistics: the exact average over the training images
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net(xf)
    save_file(net.eval().state_dict(), out / "weights.safetensors")
    return out, _tensor_splits(out, x8, y, {"forget": 32, "retain": 64, "test": 64})


@pytest.mark.learning
def test_unlearning_from_safetensors_with_a_torchvision_arch(resnet, monkeypatch):
    out, splits = resnet
    loads = []

    def logged_load(path, *args, **kwargs):  # the tensor files of the splits are the only torch.load
        loads.append((str(path), kwargs.get("weights_only")))
        return real_load(path, *args, **kwargs)

    real_load = torch.load
    monkeypatch.setattr(torch, "load", logged_load)
    args = ["--model", str(out / "weights.safetensors"), "--arch", "torchvision:resnet18:num_classes=10",
            "--forget", splits["forget"], "--retain", splits["retain"], "--test", splits["test"],
            "--size", "16x16", "--method", "neggrad", "--lr", "0.01", "--epochs", "2", "--batch-size", "8",
            "--max-drop", "off", "--quiet"]
    r = CliRunner().invoke(apply, args)
    assert r.exit_code == 0, r.output
    assert sorted(loads) == sorted((splits[s], True) for s in ("forget", "retain", "test"))  # no unpickling
    report = json.loads((out / "weights.unlearned.json").read_text())
    assert report["model"]["source"] == "safetensors"
    assert report["model"]["torchvision"] == "torchvision:resnet18:num_classes=10"
    assert report["model"]["preprocess"]["channels"] == 3  # from the architecture's first convolution
    # 8 ascent steps (2 epochs of 4 batches): the forget error rose 84-97 points on three CPU code paths
    # (AVX512, AVX2, default); 2 steps of batch 128 had risen 18-47 and stayed at 0 on one Intel machine
    assert report["before"]["UA"] < 30 and report["after"]["UA"] > report["before"]["UA"] + 40
    written = load_file(str(out / "weights.unlearned.safetensors"))
    original = load_file(str(out / "weights.safetensors"))
    assert set(written) == set(original) and not torch.equal(written["fc.weight"], original["fc.weight"])
    assert not list(out.glob(".*.tmp*"))  # the temporary file was renamed
    # the output records its architecture, names and preprocessing: it reloads without --arch
    again = models.load(out / "weights.unlearned.safetensors")
    assert again.torchvision == "torchvision:resnet18:num_classes=10" and again.preprocess.size == (16, 16)
    forget = forget_io.read(splits["forget"], again.classes, again.preprocess)
    assert 100 - metrics.accuracy(again.model, forget.x, forget.y) == pytest.approx(report["after"]["UA"])


def test_retrain_rebuilds_a_torchvision_arch(resnet, tmp_path):
    out, splits = resnet
    report = unlearn(Inputs(str(out / "weights.safetensors"), splits["forget"], splits["retain"],
                            size=(16, 16), arch="torchvision:resnet18:num_classes=10"),
                     "retrain", {"epochs": 1.0, "batch_size": 32}, out=str(tmp_path / "r.safetensors"),
                     max_drop=None)
    assert report["stop_reason"] == "budget"
    written, original = load_file(str(tmp_path / "r.safetensors")), load_file(str(out / "weights.safetensors"))
    assert all(not torch.equal(written[k], original[k]) for k in ("conv1.weight", "fc.weight"))


@pytest.mark.parametrize("spec, needle", [
    ("resnet18", "--arch takes torchvision:NAME[:key=value,...]"),
    ("torchvision:resnet81", "'resnet81' is not a torchvision classification model (did you mean resnet18"),
    ("torchvision:resnet18:num_classes", "'num_classes' is not key=value"),
    ("torchvision:resnet18:num_classes=10,num_classes=3", "'num_classes' is given twice"),
    ("torchvision:resnet18:weights=DEFAULT", "weights come from the model file"),
    ("torchvision:resnet18:colour=blue", "torchvision cannot build it (ResNet.__init__() got an unexpected"),
    ("torchvision:resnet18", "fc.weight is float32 (10, 512); --arch torchvision:resnet18 needs float32 (1000, 512)"),
    ("torchvision:resnet34", "lacks 'layer1.2.conv1.weight', 'layer1.2.bn1.weight', 'layer1.2.bn1.bias' and"),
    (None, "holds weights only: name their architecture with --arch"),
])
def test_bad_arch_or_weights_is_one_line(resnet, tmp_path, spec, needle):
    out, splits = resnet
    model = tmp_path / "w.safetensors"
    model.write_bytes((out / "weights.safetensors").read_bytes())
    args = ["--model", str(model), "--forget", splits["forget"], "--size", "16x16", "--quiet"] + \
        (["--arch", spec] if spec else [])
    r = CliRunner().invoke(apply, args)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert needle in r.output, r.output
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.one_of(st.text(max_size=40), st.text(max_size=30).map(lambda t: f"torchvision:{t}"),
                      st.text(max_size=30).map(lambda t: f"torchvision:resnet18:{t}"),
                      st.sampled_from(["-1", "0", "1e99", "nan", "x", ""]).map(
                          lambda v: f"torchvision:resnet18:num_classes={v}")))
def test_any_bad_arch_text_is_one_line(resnet, spec):
    out, splits = resnet
    r = CliRunner().invoke(apply, ["--model", str(out / "weights.safetensors"), "--arch", spec, "--forget",
                                   splits["forget"], "--size", "16x16", "--out", str(out / "never.safetensors")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, (spec, r.output)
    assert not (out / "never.safetensors").exists()


def test_kwargs_are_typed():
    arch = models.parse_arch("torchvision:mobilenet_v3_small:num_classes=10,width_mult=0.25,dropout=0,"
                             "norm_layer=x,flag=True")
    assert arch.kwargs == {"num_classes": 10, "width_mult": 0.25, "dropout": 0, "norm_layer": "x", "flag": True}
    assert type(arch.kwargs["num_classes"]) is int and type(arch.kwargs["width_mult"]) is float


def test_bad_safetensors_files(resnet, tiny, tmp_path):
    out, splits = resnet
    blob = (out / "weights.safetensors").read_bytes()
    cases = {"truncated.safetensors": blob[:200], "header.safetensors": blob[:8] + b"{not json" + blob[17:]}
    tensors = load_file(str(out / "weights.safetensors"))
    tensors["fc.weight"] = tensors["fc.weight"].double()
    save_file(tensors, tmp_path / "float64.safetensors")
    tensors["fc.weight"] = tensors["fc.weight"].float()
    save_file(tensors, tmp_path / "meta.safetensors", metadata={"invwnn": json.dumps({"preprocess": {"size": 3}})})
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name, needle in (("truncated.safetensors", "not a readable safetensors file"),
                         ("header.safetensors", "not a readable safetensors file"),
                         ("float64.safetensors", "fc.weight is float64 (10, 512)"),
                         ("meta.safetensors", "its recorded preprocessing is malformed")):
        r = CliRunner().invoke(apply, ["--model", str(tmp_path / name), "--forget", splits["forget"],
                                       "--size", "16x16", "--arch", "torchvision:resnet18:num_classes=10", "--quiet"])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and needle in r.output, r.output
    r = CliRunner().invoke(apply, ["--model", str(tiny / "model.pt"), "--forget", str(tiny / "forget"),
                                   "--arch", "torchvision:resnet18", "--quiet"])
    assert r.exit_code == 2 and "--arch is for safetensors weights" in r.output, r.output
    assert not list(tmp_path.glob("*unlearned*"))
