"""The fast learned rewind (invwnn.rewind.fast) is the reference predict_past to float rounding for
every shipped predictor, whatever the window layout and block boundaries; StillLine hands exactly
the still windows to the line and nothing else."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from invwnn.rewind import SHIPPED, LinearRewinder, make_rewinder, shipped_path
from invwnn.rewind.fast import Folded, StillLine, mac_per_window
from invwnn.rewind.predictor import (CheckpointError, LearnedRewinder, ModelConfig, Predictor, predict_past,
                                    read_checkpoint, recorded_spacing)
from invwnn.rewind.rewinders import stretched
from invwnn.unlearn.methods import REGISTRY

PLUS = REGISTRY["invwnn+"].config
LEARNED = [name for name in SHIPPED if name != "meta"]


def history(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """(k, n) random walks of very different scales (1e-4 .. 1e2) and step sizes, some flat."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.empty(n).uniform_(-4, 2, generator=g)
    steps = torch.randn(k, n, generator=g) * scale * 10.0 ** torch.empty(n).uniform_(-4, -1, generator=g)
    steps[:, : n // 20] = 0  # windows that never moved (scale falls back to eps * |w|)
    return scale * torch.randn(n, generator=g) + steps.cumsum(0)


def rewinder(name: str):
    k = 15 if name == "default-k15" else 5
    every = (recorded_spacing(read_checkpoint(shipped_path(name))) or [1])[0]
    return make_rewinder("learned", PLUS(snapshots=k, every=every, lr=1e-3, horizon=2.0), "cpu", name)


def reference(r, windows, kinds, layers):
    """The learned rewind as it was before the fast path: predict_past on the module itself."""
    past = predict_past(r.model, windows, kinds, r.context(windows, layers))
    return stretched(windows, past, r.horizon / r.model.config.u)


@pytest.mark.parametrize("name", LEARNED)
def test_the_fast_path_is_the_reference_to_float_rounding(name):
    r = rewinder(name)
    k, n = r.k, 20_000
    h = history(n, k)
    kinds = torch.tensor([0, 1, 2, 4])[torch.arange(n) % 4]  # conv, linear, bias, attention
    layers = torch.arange(n) // 5000
    want = reference(r, h.T.contiguous(), kinds, layers)
    span = h.amax(0) - h.amin(0) + 1e-6 * h.abs().amax(0)
    for windows in (h.T.contiguous(), h.T):  # what the loop passes today, and the copy-free view
        got = r.rewind(windows, kinds, layers)
        assert got.dtype == torch.float32 and got.shape == (n,)
        # the residual is bounded by clip = 8 spans; float32 rounding of it is ~1e-6 spans
        assert ((got - want).abs() <= 1e-4 * span + 1e-6 * h[0].abs()).all(), name
    assert (want - h[0]).abs().max() > 0  # it rewound something


def test_blocks_of_any_size_give_the_same_values_and_the_input_is_left_alone():
    r = rewinder("default-k5")
    h = history(1001, 5)
    before = h.clone()
    rows = r.model.kind_index(torch.zeros(1001, dtype=torch.long))
    whole = Folded(r.model).past(h.T, rows, block=1 << 16)  # one block: h.T's block is h itself
    assert torch.equal(h, before)
    torch.testing.assert_close(Folded(r.model).past(h.T, rows, block=7), whole, rtol=1e-5, atol=1e-7)


def test_a_kind_agnostic_predictor_and_the_reference_refusals():
    """kind_dim 0 (no embedding: the head's bias alone) folds too; unknown kinds and bad shapes are refused."""
    torch.manual_seed(0)
    r = LearnedRewinder(Predictor(ModelConfig(k=5, kinds=("conv", "linear"), kind_dim=0, width=16)), "untrained", 3.0)
    w = history(3000, 5).T.contiguous()
    kinds = torch.zeros(3000, dtype=torch.long)
    torch.testing.assert_close(r.rewind(w, kinds), reference(r, w, kinds, None), rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="not trained on parameter kind 'bias'"):
        r.rewind(w, torch.full((3000,), 2, dtype=torch.long))
    with pytest.raises(ValueError, match="windows must be"):
        r.rewind(w[:, :4], kinds)


def test_the_fast_path_under_bfloat16_autocast_stays_near_float32():
    r = rewinder("default-k15")
    h = history(4096, 15)
    kinds = torch.zeros(4096, dtype=torch.long)
    exact = r.rewind(h.T, kinds)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = r.rewind(h.T, kinds)
    assert low.dtype == torch.float32
    move = (exact - h[0]).abs()
    # bf16 keeps 8 bits: the rewind's length within a few percent, never its sign flipped wholesale
    assert ((low - exact).abs() <= 0.05 * move + 0.05 * (h.amax(0) - h.amin(0))).float().mean() > 0.95


def test_multiply_adds_are_the_linear_layers_and_the_kind_embedding_row():
    for name in ("default-k15", "default-k5", "episodes-context"):
        model = rewinder(name).model
        linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        assert mac_per_window(model.config) == linear, name


def test_still_line_hands_exactly_the_still_windows_to_the_line():
    inner = rewinder("default-k5")
    h = history(5000, 5, seed=3)
    w, kinds = h.T.contiguous(), torch.zeros(5000, dtype=torch.long)
    assert torch.equal(StillLine(inner, 0.0).rewind(w, kinds), inner.rewind(w, kinds))
    skip = StillLine(inner, 0.5, horizon=2.0)
    got = skip.rewind(w, kinds)
    span = w.amax(1) - w.amin(1)
    still = span <= 0.5 * span.median()
    assert 0.05 < still.float().mean() < 0.95
    assert skip.last["skipped"] == pytest.approx(float(still.float().mean()))
    torch.testing.assert_close(got[still], LinearRewinder(2.0).rewind(w[still]))
    torch.testing.assert_close(got[~still], inner.rewind(w[~still], kinds[~still]))
    assert skip.describe()["still_line"] == {"threshold": 0.5, "horizon": 2.0}
