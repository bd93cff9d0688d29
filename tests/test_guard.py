"""The guard's retreat on a known answer: a linear classifier whose weights W0 sort every image right
(labels are the argmax of x @ W0); any positive multiple of W0 sorts them the same, any negative one
gets them wrong. A one-shot "method" replaces W0 by W0 + d * (-W0); the retreat keeps the largest
share s of that move (0.5, 0.25, 0.125 in turn) with 1 - s * d > 0."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from invwnn.unlearn.apply import format_report
from invwnn.inputs.splits import Split
from invwnn.unlearn.guard import RETREATS, Guard


def _case(seed: int = 0) -> tuple[nn.Module, Split]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(300, 1, 4, 4, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(5, 16, generator=g))
        y = model(x).argmax(1)
    return model, Split(x, y, "retain")


@pytest.mark.parametrize("move, share", [(3.0, 0.25), (1.5, 0.5), (6.0, 0.125), (16.0, None)])
def test_a_failing_one_shot_edit_keeps_the_largest_share_of_its_move_that_passes(move, share):
    model, split = _case()
    w0 = model[1].weight.detach().clone()
    guard = Guard(model, split, split, "retain", 5.0, "end", "cpu", seed=0)
    assert guard.reference == 100.0
    with torch.no_grad():
        model[1].weight.sub_(move * w0)  # the method's result: -(move - 1) * W0, every image wrong
    guard.finish()
    d = guard.describe()
    assert d["stopped"] and d["reason"] == "guard" and d["acc_at_stop"] == 0.0
    tried = list(RETREATS[: RETREATS.index(share) + 1]) if share else list(RETREATS)
    assert d["retreat"] == {"share": share, "tried": tried, "from": "original", "to": {"end": True}}
    expected = w0 * (1 - share * move) if share else w0  # no share passes: the original
    assert torch.allclose(model[1].weight, expected, atol=1e-6)
    assert d["kept"] == ({"retreat": share} if share else "original")
    report = {"method": "m", "seconds": 0.0, "stop_reason": "guard", "guard": d,
              "before": {"UA": 0.0}, "after": {"UA": 0.0}}
    text = format_report(report)
    if share:
        assert f"kept {share:g} of the move from the original weights to the method's result" in text
        assert "nothing was unlearned" not in text
    else:
        assert "no share of the move" in text and "nothing was unlearned" in text


def test_non_finite_weights_are_not_retreated_from():
    model, split = _case()
    w0 = model[1].weight.detach().clone()
    guard = Guard(model, split, split, "retain", 5.0, "end", "cpu", seed=0)
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    guard.finish()
    d = guard.describe()
    assert d["reason"] == "non-finite" and "retreat" not in d and d["kept"] == "original"
    assert torch.equal(model[1].weight, w0)


def test_finite_weights_with_overflowing_outputs_are_retreated_from():
    """Weights scaled to 0.9 of float32's maximum stay finite while their logits overflow; a
    share of that move keeps every logit finite (and the classifier right)."""
    model, split = _case()
    w0 = model[1].weight.detach().clone()
    fmax = torch.finfo(torch.float32).max
    scale = 0.9 * fmax / w0.abs().max().item()
    largest = (split.x.flatten(1).double() @ w0.double().T).abs().max().item()
    assert fmax < largest * scale < 8 * 0.9 * fmax  # the outputs overflow; 1/8 of the move does not
    guard = Guard(model, split, split, "retain", 5.0, "end", "cpu", seed=0)
    with torch.no_grad():
        model[1].weight.mul_(scale)
    guard.finish()
    d = guard.describe()
    assert d["reason"] == "non-finite" and d["retreat"]["share"] in RETREATS
    share = d["retreat"]["share"]
    assert torch.allclose(model[1].weight, w0 * (1 + share * (scale - 1)), rtol=1e-5)
    assert largest * scale * share < fmax
