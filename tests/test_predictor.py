"""The predictor network, predict_past and the checkpoint file."""
from __future__ import annotations

import subprocess
import sys
import os
from pathlib import Path

import pytest
import torch

from trajgen.nets import KINDS
from trajgen.store import complete_runs
from invwnn.rewind import predictor as P
from invwnn.train.heldout import eval_sample, evaluate, fit_horizons
from invwnn.rewind.predictor import (EVALUATION_FORMAT, CheckpointError, ModelConfig, Predictor, default_checkpoint,
                                     load_predictor, predict_past, read_checkpoint, rewrite_evaluation, save_checkpoint)


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


@pytest.mark.learning
@pytest.mark.parametrize("k", [15, 5])
def test_shipped_checkpoints_beat_both_baselines_on_runs_they_never_saw(k, small_store):
    """The shipped predictors, scored from scratch on the ``small_store`` collection (other run
    lengths and snapshot interval than their training data): a broken load, normalisation or kind
    lookup would lose to the baselines. The damped line's horizons come from 3 of its runs, the
    score from the other 6."""
    path = default_checkpoint(k)
    assert path.stat().st_size < 5 * 2**20
    model = load_predictor(path)
    assert model.config.k == k and model.config.u == 3 and set(model.config.kinds) == set(KINDS)
    runs = complete_runs(small_store)
    val, fit = (eval_sample(small_store, names, k, 3, model.config.kinds, 300, seed=1) for names in (runs[3:], runs[:3]))
    table = evaluate(model, val, fit, fit_horizons(fit, 3))
    for kind, row in table.items():
        assert row["model"] < row["no_rewind"] and row["model"] < row["damped_line"], kind
    assert table["all"]["ratio"] < 0.95


@pytest.mark.parametrize("k", [15, 5])
def test_shipped_records_are_current_and_self_consistent(k):
    ckpt = read_checkpoint(default_checkpoint(k))
    ev, prov = ckpt["evaluation"], ckpt["provenance"]
    assert ev["format"] == EVALUATION_FORMAT and ev["held_out_runs"] == prov["val_runs"]
    assert not set(ev["horizon_fit"]["runs"]) & set(prov["val_runs"])
    assert len(prov["val_runs"]) + prov["train_runs"] == prov["runs"] and prov["windows_seen"] > 0
    for kind, row in ev["held_out"].items():
        chosen = min(("no_rewind", "damped_line"), key=lambda b: row[f"train_{b}"])
        assert row["baseline"] == chosen and row["ratio"] == pytest.approx(row["model"] / row[chosen])
        assert kind == "all" or 0 <= row["horizon"] <= ckpt["model_config"].u


def test_rewrite_evaluation_keeps_everything_else_bit_for_bit(tmp_path, monkeypatch):
    torch.manual_seed(2)
    model = Predictor(ModelConfig(width=8))
    path = save_checkpoint(tmp_path / "p.pt", model, {"steps": 1}, {"old": 1}, {"store": "x"})
    before = torch.load(path, weights_only=True)
    rewrite_evaluation(path, {"new": 2})
    after = torch.load(path, weights_only=True)
    assert read_checkpoint(path)["evaluation"] == {"new": 2}
    assert all(torch.equal(after["state_dict"][n], v) for n, v in before["state_dict"].items())
    assert {k: v for k, v in after.items() if k not in ("state_dict", "evaluation")} == \
        {k: v for k, v in before.items() if k not in ("state_dict", "evaluation")}
    kept = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(P.torch, "save", boom)
    with pytest.raises(OSError):
        rewrite_evaluation(path, {"newer": 3})
    assert path.read_bytes() == kept and os.listdir(tmp_path) == ["p.pt"]
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        rewrite_evaluation(tmp_path / "foreign.pt", {})


def test_no_shipped_checkpoint_for_other_windows():
    with pytest.raises(CheckpointError, match="invwnn train --window 7"):
        default_checkpoint(7)


def test_predictor_doc_shows_the_shipped_records(tmp_path):
    """docs/predictor.md's generated section is exactly what scripts/predictor_doc.py makes of the
    shipped checkpoints' records; a document without the markers is refused in one line."""
    root = Path(__file__).resolve().parent.parent
    script = [sys.executable, str(root / "scripts" / "predictor_doc.py")]
    fresh = subprocess.run([*script, "--check"], cwd=root, capture_output=True, text=True)
    assert fresh.returncode == 0, f"docs/predictor.md is stale: run scripts/predictor_doc.py ({fresh.stderr})"
    broken = tmp_path / "predictor.md"
    broken.write_text("# no generated section here\n")
    refused = subprocess.run([*script, "--doc", str(broken), "--check"], cwd=root, capture_output=True, text=True)
    assert refused.returncode != 0 and "GENERATED" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
