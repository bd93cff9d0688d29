"""Training and held-out evaluation on a real (small) collection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trajgen.store import complete_runs, index, open_run, open_store
from invwnn.fit import TrainConfig, eval_sample, split_runs, train
from invwnn.predictor import load_predictor, read_checkpoint
from invwnn.windows import WindowError


def test_train_config_round_trips_through_json():
    c = TrainConfig(kinds=("conv", "bias"), val_archs=("vit",), steps=7, lr=1e-4)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def arch_of(store):
    return {name: s["arch"] for name, s in index(open_store(store)).items()}


def test_validation_never_shares_runs_with_training(small_store):
    runs = complete_runs(small_store)
    arch = arch_of(small_store)
    train_runs, val_runs = split_runs(small_store, runs, 0.34, (), seed=3)
    assert not set(train_runs) & set(val_runs) and sorted(train_runs + val_runs) == sorted(runs)
    assert {arch[r] for r in val_runs} == {"mlp", "cnn", "vit"}  # one of each: balanced by arch
    train_runs, val_runs = split_runs(small_store, runs, 0.1, ("vit",), seed=3)
    assert {arch[r] for r in val_runs} == {"vit"} and "vit" not in {arch[r] for r in train_runs}
    with pytest.raises(WindowError, match="leaves none"):
        split_runs(small_store, [r for r in runs if arch[r] == "vit"], 0.1, ("vit",), seed=0)


def test_eval_sample_is_seeded_and_reads_true_histories(small_store):
    runs = complete_runs(small_store)[:2]
    a = eval_sample(small_store, runs, 15, 3, ("linear", "bias"), per_kind=50, seed=5)
    b = eval_sample(small_store, runs, 15, 3, ("linear", "bias"), per_kind=50, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(a["target"]) == 200
    raw = np.concatenate([open_run(small_store, r).history[:] for r in runs])
    # every sampled (past, window) pair is a stretch of one coordinate's true history
    for i in range(0, 200, 17):
        w, past = a["w"][i].numpy(), a["target"][i].item()
        rows, cols = np.nonzero(raw == w[0])
        assert any(3 <= j <= raw.shape[1] - 15 and np.array_equal(raw[r, j:j + 15], w) and raw[r, j - 3] == past
                   for r, j in zip(rows, cols)), i


def test_trained_predictor_beats_both_baselines_on_held_out_runs(small_store, tmp_path):
    out = tmp_path / "p.pt"
    config = TrainConfig(store=small_store, out=str(out), steps=400, batch_size=2048, val_fraction=0.33,
                         eval_per_kind=1000, eval_every=100, workers=1, seed=0)
    result = train(config, progress=False)
    held = result["evaluation"]["held_out"]
    assert held["all"]["n"] > 2000
    assert held["all"]["model"] < held["all"]["no_rewind"]
    assert held["all"]["model"] < held["all"]["linear"]  # linear: best fit chosen on this very sample
    ckpt = read_checkpoint(out)
    assert ckpt["evaluation"]["held_out"] == held
    assert ckpt["provenance"]["windows_seen"] == 400 * 2048
    assert len(ckpt["provenance"]["val_runs"]) == 3 and ckpt["provenance"]["train_runs"] == 6
    assert TrainConfig.from_dict(ckpt["train_config"]) == config
    load_predictor(out)
