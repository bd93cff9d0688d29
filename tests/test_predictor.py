"""The predictor network, predict_past and the checkpoint file."""
from __future__ import annotations

import os

import pytest
import torch

from trajgen.nets import KINDS
from invwnn import predictor as P
from invwnn.predictor import (CheckpointError, ModelConfig, Predictor, default_checkpoint, load_predictor,
                              predict_past, read_checkpoint, save_checkpoint)


def windows(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = 0.1 * torch.randn(n, 1, generator=g) + 0.01 * torch.randn(n, 15, generator=g).cumsum(1)
    return w, torch.randint(0, len(KINDS), (n,), generator=g)


def test_predict_past_is_scale_equivariant_and_batch_independent():
    torch.manual_seed(0)
    model = Predictor(ModelConfig())
    w, kinds = windows()
    p = predict_past(model, w, kinds)
    assert p.shape == (300,) and torch.isfinite(p).all()
    assert torch.allclose(predict_past(model, 100.0 * w, kinds), 100.0 * p, rtol=1e-4, atol=1e-6)
    assert torch.allclose(predict_past(model, w, kinds, batch_size=7), p, atol=1e-6)
    # the residual is bounded: no prediction further than clip window-ranges from the first value
    span = w.amax(1) - w.amin(1)
    assert ((p - w[:, 0]).abs() <= 8.0 * span * 1.001 + 1e-6).all()


def test_unknown_kind_and_bad_shape_are_refused():
    model = Predictor(ModelConfig(kinds=("conv", "linear")))
    w, _ = windows(4)
    with pytest.raises(CheckpointError, match="not trained on parameter kind 'bias'"):
        predict_past(model, w, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"\(n, 15\)"):
        predict_past(model, w[:, :14], torch.zeros(4, dtype=torch.long))


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(1)
    model = Predictor(ModelConfig(k=7, u=2, width=16, kinds=("conv", "bias")))
    path = save_checkpoint(tmp_path / "p.pt", model, {"steps": 3}, {"held_out": {}}, {"store": "x"})
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == P.FORMAT_VERSION and raw["model_config"]["k"] == 7
    loaded = load_predictor(path)
    assert loaded.config == model.config
    w = torch.randn(50, 7).cumsum(1)
    kinds = torch.tensor([0, 2] * 25)
    assert torch.equal(predict_past(loaded, w, kinds), predict_past(model, w, kinds))
    assert read_checkpoint(path)["provenance"] == {"store": "x"}
    assert [f.name for f in tmp_path.iterdir()] == ["p.pt"]  # no temporary file left behind


def test_failed_save_leaves_previous_checkpoint_untouched(tmp_path, monkeypatch):
    model = Predictor(ModelConfig(width=8))
    path = save_checkpoint(tmp_path / "p.pt", model, {}, {}, {})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(P.torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, Predictor(ModelConfig(width=8)), {}, {}, {})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["p.pt"]


def test_corrupted_foreign_and_future_checkpoints_are_refused(tmp_path):
    model = Predictor(ModelConfig(width=8))
    good = save_checkpoint(tmp_path / "good.pt", model, {}, {}, {})
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(truncated)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an invwnn predictor"):
        read_checkpoint(tmp_path / "foreign.pt")
    payload = torch.load(good, weights_only=True)
    payload["format_version"] = P.FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format"):
        read_checkpoint(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("k", [15, 5])
def test_shipped_checkpoints_load_and_beat_baselines(k):
    path = default_checkpoint(k)
    assert path.stat().st_size < 5 * 2**20
    ckpt = read_checkpoint(path)
    model = load_predictor(path)
    assert model.config.k == k and model.config.u == 3 and set(model.config.kinds) == set(KINDS)
    held = ckpt["evaluation"]["held_out"]["all"]
    assert held["ratio_no_rewind"] < 1 and held["ratio_linear"] < 1
    assert ckpt["provenance"]["runs"] >= 2 and ckpt["provenance"]["windows_seen"] > 0


def test_no_shipped_checkpoint_for_other_windows():
    with pytest.raises(CheckpointError, match="invwnn train --window 7"):
        default_checkpoint(7)
