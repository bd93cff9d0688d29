"""Exported programs (invwnn.inputs.exported): a program exported with a fixed or bounded batch
size runs any batch as micro-batches with the whole batch's outputs and gradients, unlearning from it
forgets and writes what it reports, and training-mode batch norm is reported inexact."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from invwnn.audit import metrics
from invwnn.cli.apply import apply
from invwnn.inputs import models
from invwnn.inputs import splits as forget_io
from invwnn.inputs.preprocess import PreprocessHint

pytestmark = pytest.mark.usefixtures("one_thread")


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
    loaded = models.load(tmp_path / "m.pt2", preprocess=PreprocessHint())
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
    before = models.load(tmp_path / "m.pt2", preprocess=PreprocessHint())
    after = models.load(tmp_path / "m.unlearned.pt2")
    # loading probes the model once: that must not move the running statistics
    assert torch.equal(before.net.state_dict()["1.running_mean"],
                       torch.export.load(str(tmp_path / "m.pt2")).state_dict["1.running_mean"])
    # training-mode batch norm updated its running statistics, and they were written
    assert not torch.equal(before.net.state_dict()["1.running_mean"], after.net.state_dict()["1.running_mean"])
