"""Training and held-out evaluation on a real (small) collection."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from trajgen.store import complete_runs, create_store, index, open_run, open_store
from invwnn.cli.main import main
from invwnn.train.evaluate import evaluate_checkpoint
from invwnn.rewind import LinearRewinder
from invwnn.train.fit import TrainConfig, train
from invwnn.train.heldout import eval_sample, split_runs
from invwnn.rewind.predictor import EVALUATION_FORMAT, load_predictor, read_checkpoint
from invwnn.train.windows import WindowError, fit_horizon


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


@pytest.fixture(scope="module")
def trained(small_store, tmp_path_factory):
    """A predictor trained on ``small_store`` (3 of 9 runs held out) and its training config."""
    out = tmp_path_factory.mktemp("fit") / "p.pt"
    config = TrainConfig(store=small_store, out=str(out), steps=400, batch_size=2048, val_fraction=0.33,
                         eval_per_kind=1000, eval_every=100, fit_runs=3, workers=1, seed=0)
    return train(config, progress=False), config


@pytest.mark.learning
def test_trained_predictor_beats_both_baselines_on_held_out_runs(trained):
    result, config = trained
    held = result["evaluation"]["held_out"]
    assert held["all"]["n"] > 2000
    assert held["all"]["model"] < held["all"]["no_rewind"] and held["all"]["model"] < held["all"]["damped_line"]
    ckpt = read_checkpoint(config.out)
    assert ckpt["evaluation"]["held_out"] == held and ckpt["evaluation"]["format"] == EVALUATION_FORMAT
    assert ckpt["provenance"]["windows_seen"] == 400 * 2048
    assert len(ckpt["provenance"]["val_runs"]) == 3 and ckpt["provenance"]["train_runs"] == 6
    assert TrainConfig.from_dict(ckpt["train_config"]) == config
    load_predictor(config.out)


def test_record_is_consistent_and_chosen_on_training_runs_only(trained):
    result, config = trained
    ev = result["evaluation"]
    fit_runs, val_runs = ev["horizon_fit"]["runs"], ev["held_out_runs"]
    assert len(fit_runs) == 3 and not set(fit_runs) & set(val_runs)
    assert {arch_of(config.store)[r] for r in fit_runs} == {"mlp", "cnn", "vit"}
    for kind, row in ev["held_out"].items():
        chosen = min(("no_rewind", "damped_line"), key=lambda b: row[f"train_{b}"])
        assert row["baseline"] == chosen and row["ratio"] == pytest.approx(row["model"] / row[chosen])
        if kind != "all":
            assert row["horizon"] == ev["horizon_fit"]["horizons"][kind] and 0 <= row["horizon"] <= config.u


def test_evaluate_recomputes_the_recorded_held_out_ratios(trained):
    result, config = trained
    again = evaluate_checkpoint(config.out, config.store)
    recorded = result["evaluation"]
    assert again["horizon_fit"] == recorded["horizon_fit"] and again["curve"] == recorded["curve"]
    for kind, row in recorded["held_out"].items():
        for key, value in row.items():
            assert again["held_out"][kind][key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), (kind, key)


def test_horizon_ignores_held_out_data(trained, tmp_path):
    """Reversing the held-out runs' histories in a copy of the store changes every held-out figure
    but neither the fitted horizons nor the baselines' training errors."""
    result, config = trained
    store = tmp_path / "copy.zarr"
    shutil.copytree(config.store, store)
    root = zarr.open_group(str(store), mode="r+")
    for name in result["evaluation"]["held_out_runs"]:
        h = root["runs"][name]["history"]
        h[:] = np.ascontiguousarray(h[:][:, ::-1])  # numcodecs' PCodec encodes only contiguous chunks
    before, after = result["evaluation"], evaluate_checkpoint(config.out, str(store))
    assert after["horizon_fit"] == before["horizon_fit"]
    for kind, row in before["held_out"].items():
        assert after["held_out"][kind]["train_damped_line"] == pytest.approx(row["train_damped_line"], rel=1e-6)
        assert after["held_out"][kind]["no_rewind"] != pytest.approx(row["no_rewind"], rel=1e-3)


def test_fit_horizon_is_the_exact_minimiser():
    g = torch.Generator().manual_seed(0)
    w = (0.01 * torch.randn(2000, 15, generator=g)).cumsum(1)
    t = torch.arange(15.0)
    lines = 0.3 + 0.02 * torch.randn(2000, 1, generator=g) * t
    # targets on the lines 1.7 intervals before the first snapshot: h = 1.7 exactly
    assert fit_horizon(lines, lines[:, 0] - 1.7 * (lines[:, 1] - lines[:, 0]), 3.0) == pytest.approx(1.7, abs=1e-5)
    target = w[:, 0] - 0.5 * (w[:, 2] - w[:, 0]) + 0.005 * torch.randn(2000, generator=g)
    h = fit_horizon(w, target, 3.0)
    mae = lambda x: float((LinearRewinder(x).rewind(w.double()) - target.double()).abs().mean())  # noqa: E731
    assert mae(h) <= min(mae(float(x)) for x in np.linspace(0, 3, 3001)) + 1e-12
    assert fit_horizon(w, w[:, 0] + 10.0, 3.0) in (0.0, 3.0)  # clamped to [0, U]
    assert fit_horizon(torch.ones(4, 15), torch.zeros(4), 3.0) == 0.0  # flat windows: h is irrelevant


def test_evaluate_command_writes_only_the_record(trained, tmp_path):
    result, config = trained
    ckpt = tmp_path / "p.pt"
    ckpt.write_bytes(Path(config.out).read_bytes())
    payload = torch.load(ckpt, weights_only=True)
    payload["evaluation"] = json.dumps({"held_out": {}, "curve": [1]})  # an older record: no format, no fit runs
    torch.save(payload, ckpt)
    r = CliRunner().invoke(main, ["inspect", str(ckpt)])
    assert r.exit_code == 0 and "invwnn evaluate" in r.output
    r = CliRunner().invoke(main, ["evaluate", str(ckpt), "--store", config.store, "--write"])
    assert r.exit_code == 0, r.output
    assert "headline" in r.output and "rewritten" in r.output
    new = torch.load(ckpt, weights_only=True)
    assert new.keys() == payload.keys()
    assert all(torch.equal(new["state_dict"][k], v) for k, v in payload["state_dict"].items())
    assert new["provenance"] == payload["provenance"] and new["train_config"] == payload["train_config"]
    ev = json.loads(new["evaluation"])
    assert ev["curve"] == [1] and ev["horizon_fit"] == result["evaluation"]["horizon_fit"]
    assert [f.name for f in tmp_path.iterdir()] == ["p.pt"]
    r = CliRunner().invoke(main, ["evaluate", str(ckpt), "--store", config.store, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["held_out"] == ev["held_out"]


def test_evaluate_refuses_a_store_without_the_runs_in_one_line(trained, tmp_path):
    _, config = trained
    empty = tmp_path / "empty.zarr"
    create_store(empty)
    for store, text in [(empty, "lacks 6 run(s)"), (tmp_path / "nope.zarr", "not a trajgen store")]:
        r = CliRunner().invoke(main, ["evaluate", config.out, "--store", str(store)])
        assert r.exit_code == 2 and text in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_warm_start_begins_at_the_checkpoint_and_refuses_another_model(trained, tmp_path):
    """--init: with a learning rate too small to move a weight, one step ends where the checkpoint
    was; the provenance names the checkpoint; a checkpoint of another window size is refused before
    any window is read."""
    from dataclasses import replace
    from invwnn.rewind.predictor import CheckpointError

    _, config = trained
    warm = replace(config, out=str(tmp_path / "warm.pt"), init=config.out, steps=1, lr=1e-30, eval_every=1)
    train(warm, progress=False)
    before, after = read_checkpoint(config.out), read_checkpoint(warm.out)
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    assert after["provenance"]["init"]["sha256"] == hashlib.sha256(Path(config.out).read_bytes()).hexdigest()
    cold = replace(warm, out=str(tmp_path / "cold.pt"), init=None)
    train(cold, progress=False)
    assert not torch.equal(read_checkpoint(cold.out)["state_dict"]["values.0.weight"], before["state_dict"]["values.0.weight"])
    with pytest.raises(CheckpointError, match="k 15 vs 5"):
        train(replace(warm, k=5, out=str(tmp_path / "k5.pt")), progress=False)
    assert not (tmp_path / "k5.pt").exists()
