"""invwnn bench: scenario builders on real Fashion-MNIST, the stopping schedule, the cache, and a
quick bench run end to end through the command."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from invwnn.bench import runner, scenarios
from invwnn.bench_cli import _command, bench
from invwnn.methods import REGISTRY
from trajgen import data as datasets


@pytest.fixture(scope="module")
def ds():
    return datasets.load("fashion-mnist")


def build(ds, name, seed=0, **kw):
    return scenarios.build(scenarios.scenario_config(name, train_size=1000, test_size=500, **kw), seed, ds)


def test_label_noise_labels_really_are_wrong(ds):
    s = build(ds, "label-noise")
    assert s.forget.sum() == 200  # 20% of 1000
    assert (s.y[s.forget] != s.clean_y[s.forget]).all()
    assert (s.y[~s.forget] == s.clean_y[~s.forget]).all()
    assert s.y.min() >= 0 and s.y.max() < len(s.classes)
    # the wrong labels are spread over the other classes, not one fixed shift
    shifts = (s.y[s.forget] - s.clean_y[s.forget]) % len(s.classes)
    assert len(set(shifts.tolist())) == len(s.classes) - 1


def test_backdoor_trigger_in_forget_split_only(ds):
    s = build(ds, "backdoor")
    size, target = s.config.trigger_size, s.config.target_label
    assert s.forget.sum() == 200
    assert scenarios.has_trigger(s.x[s.forget], size).all()
    assert (s.y[s.forget] == target).all()
    assert not scenarios.has_trigger(s.x[~s.forget], size).any()
    assert not scenarios.has_trigger(s.test.x, size).any()  # the clean test set is clean
    trig = s.extras["triggered_test"]
    assert scenarios.has_trigger(trig.x, size).all() and (trig.y == target).all()
    assert len(trig) == int((s.test.y != target).sum())
    # the trigger changes only its corner: the rest of each image is the clean test image
    clean = s.test.x[s.test.y != target]
    assert torch.equal(trig.x[:, :, :-size, :], clean[:, :, :-size, :])


def test_class_random_and_overfit_splits(ds):
    s = build(ds, "class", forget_class=3)
    assert (s.y[s.forget] == 3).all() and not (s.y[~s.forget] == 3).any()
    assert s.config.mnemonic_mix > 0
    r = build(ds, "random50")
    assert r.forget.sum() == 500
    assert torch.equal(r.forget, build(ds, "random50").forget)  # deterministic in the seed
    assert not torch.equal(r.forget, build(ds, "random50", seed=1).forget)
    o = build(ds, "overfit")
    assert o.forget.sum() == 10 and o.config.overfit_steps > 0
    quick, full = scenarios.scenario_config("random10", quick=True), scenarios.scenario_config("random10")
    assert quick.train_size < full.train_size and quick.epochs < full.epochs
    with pytest.raises(Exception, match="unknown scenario"):
        scenarios.scenario_config("nope")


def test_check_schedule_is_dense_early_and_sparse_late():
    checks = [s for s in range(1, 1025) if runner.due(s)]
    assert checks[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert 1024 in checks and 1023 not in checks
    assert len(checks) <= 4 * 11  # four per doubling


def test_original_and_retrain_are_cached(ds, tmp_path):
    cfg = scenarios.scenario_config("random10", quick=True, train_size=300, test_size=100, epochs=1.0, width=4)
    s = scenarios.build(cfg, 0, ds)
    a = runner.prepare(s, tmp_path)
    b = runner.prepare(s, tmp_path)
    assert not a.meta["original"]["cache_hit"] and b.meta["original"]["cache_hit"] and b.meta["retrain"]["cache_hit"]
    for m1, m2 in ((a.original, b.original), (a.retrain, b.retrain)):
        for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
            assert torch.equal(v1, v2), k
    # another seed is another key; the retrained model never saw the forget set, so it differs
    assert runner.prepare(scenarios.build(cfg, 1, ds), tmp_path).meta["original"]["cache_key"] != a.meta["original"]["cache_key"]
    assert not torch.equal(a.original.net[0].weight, a.retrain.net[0].weight)


def test_bad_flags_are_one_line_exit_2(tmp_path):
    for args in (["--scenario", "nope"], ["--scenario", "random10", "--methods", "bogus"]):
        r = CliRunner().invoke(bench, args + ["--out", str(tmp_path / "o")])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and "unknown" in r.output


def test_quick_bench_end_to_end(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    base = ["--scenario", "backdoor", "--quick", "--train-size", "400", "--test-size", "200", "--epochs", "2",
            "--width", "8", "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    args = base + ["--methods", "invwnn,neggrad,task-vector,fisher,mnemonic"]
    r = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for name in ("table.md", "results.csv", "results.json", "trajectories.png", "gap.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["command"].startswith("invwnn bench --scenario backdoor") and "--quick" in res["command"]
    assert res["bench"]["seeds"] == [0] and res["versions"]["torch"]
    run = res["runs"][0]
    target = run["retrain"]["UA"]
    assert "acc:triggered_test" in run["original"]  # attack success rate before
    for name in ("invwnn", "neggrad", "task-vector", "fisher"):
        m = run["methods"][name]
        assert set(m["budget"]) >= {"RA", "UA", "TA", "MIA", "gap", "seconds", "time_ratio"}
        ref = run["retrain"]
        want = sum(abs(m["budget"][k] - ref[k]) for k in ("RA", "UA", "TA", "MIA")) / 4
        assert m["budget"]["gap"] == pytest.approx(want)
        eq = m["equal"]
        if eq["reached"] and eq["stopped_at"] is not None:
            # stopped at the first check whose (subset) UA reached Retrain's, no later than budget
            assert 100 - eq["stopped_at"]["forget_acc"] >= target
            assert eq["seconds"] <= m["budget"]["seconds"] + 1e-6
            earlier = m["trajectory"][: m["trajectory"].index(eq["stopped_at"])]
            assert all(100 - t["forget_acc"] < target for t in earlier)
    assert "error" in run["methods"]["mnemonic"]  # backdoor's original has no mnemonic codes
    iterations = REGISTRY["invwnn"].config().iterations
    assert len(run["methods"]["invwnn"]["trajectory"]) == iterations  # one check per rewind
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["name"] for r in rows[:2]] == ["Original", "Retrain"] and "ASR" in rows[0]
    table = (out / "table.md").read_text()
    assert "| Retrain |" in table and "ASR" in table and "mnemonic" in table
    # a rerun takes the original and the retrained model from the cache
    r2 = CliRunner().invoke(bench, base + ["--methods", "neggrad"], catch_exceptions=False)
    assert r2.exit_code == 0, r2.output
    res2 = json.loads((out / "results.json").read_text())
    assert res2["runs"][0]["original"]["cache_hit"] and res2["runs"][0]["retrain"]["cache_hit"]
    assert res2["runs"][0]["retrain"]["UA"] == pytest.approx(target)


def test_tuned_overrides_apply_to_every_rewinder_ablation(tmp_path):
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"chosen": {"invwnn+": {"lr": 0.002}, "salun": {"sparsity": 0.8}}}))
    got = runner.tuned_overrides(tuned)
    assert got["invwnn+"] == got["invwnn+-linear"] == got["invwnn+-none"] == {"lr": 0.002}
    assert got["salun"] == {"sparsity": 0.8} and "invwnn" not in got and "neggrad+" not in got
    assert runner.tuned_overrides(None) == {}
    (tmp_path / "bad.json").write_text("{}")
    r = CliRunner().invoke(bench, ["--scenario", "random10", "--tuned", str(tmp_path / "bad.json"),
                                   "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a scripts/tune.py result" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_recorded_command_is_the_one_given():
    for args in (["--scenario", "random10", "--no-progress"], ["--scenario", "class", "--seeds", "2", "--quick"]):
        ctx = bench.make_context("bench", list(args))
        assert _command(ctx) == "invwnn bench " + " ".join(args)
