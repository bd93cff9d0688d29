"""invwnn bench (invwnn.cli.bench, invwnn.bench.runner and its report): the stopping schedule, the
equal-forgetting table, a quick bench run end to end through the command, resuming from the log,
the as-run alias, and a search then a bench of two scenarios on one log."""
from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from invwnn.bench import prepare, report, runner, scenarios, search, track
from invwnn.bench.pool import read_log
from invwnn.cli.bench import _command, bench, panel


def test_check_schedule_is_dense_early_and_sparse_late():
    checks = [s for s in range(1, 1025) if track.due(s)]
    assert checks[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert 1024 in checks and 1023 not in checks
    assert len(checks) <= 4 * 11  # four per doubling


def test_bad_flags_are_one_line_exit_2(tmp_path):
    for args in (["--scenario", "nope"], ["--scenario", "random10", "--methods", "bogus"]):
        r = CliRunner().invoke(bench, args + ["--out", str(tmp_path / "o")])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and "unknown" in r.output


@pytest.mark.learning
def test_quick_bench_end_to_end(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    base = ["--scenario", "backdoor", "--quick", "--train-size", "400", "--test-size", "400", "--epochs", "2",
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
        # RMIA against 4 references (Retrain scored against the other 3) and ReGUn's five-term gap
        want5 = sum(abs(m["budget"][k] - ref[k]) for k in ("RA", "UA", "TA", "RMIA_acc", "RMIA_AUC")) / 5
        assert m["budget"]["gap5"] == pytest.approx(want5) and 0 <= m["budget"]["RMIA_AUC"] <= 100
        eq = m["equal"]
        if m["stop_mode"] == "none":  # one-shot: reached iff its one result is at Retrain's UA
            assert eq["reached"] == (eq["UA"] >= target - 1e-9) and eq["stopped_at"] is None
            continue
        assert eq["reached"] == (eq["stopped_at"] is not None)
        if eq["reached"]:
            # stopped at the first check whose (subset) UA reached Retrain's, no later than budget
            assert 100 - eq["stopped_at"]["forget_acc"] >= target
            assert eq["seconds"] <= m["budget"]["seconds"] + 1e-6
            earlier = m["trajectory"][: m["trajectory"].index(eq["stopped_at"])]
            assert all(100 - t["forget_acc"] < target for t in earlier)
        else:  # never reached: no check, the final state's included, got there
            assert all(100 - t["forget_acc"] < target for t in m["trajectory"])
    # the protocol must have stopped something, so this test cannot pass with every row unreached:
    # InvWNN's first rewinds on a backdoor take the forget accuracy down at once
    inv = run["methods"]["invwnn"]
    # (the loop itself stops at its estimate of Retrain, so the protocol's stop may be its last check)
    assert inv["equal"]["reached"] and inv["equal"]["stopped_at"]["iteration"] <= len(inv["trajectory"])
    # a step method's last check is its final state
    assert run["methods"]["neggrad"]["trajectory"][-1]["step"] == run["methods"]["neggrad"]["optimizer_steps"]
    # and a step method that gets there is stopped at the first check that does, before its end
    config = scenarios.scenario_config("backdoor", quick=True, train_size=400, test_size=400, epochs=2.0, width=8)
    prep = prepare.prepare_cached(config, 0, cache)
    fast = runner.BenchConfig(methods=("neggrad",), seeds=(0,), cache_dir=str(cache), progress=False,
                              method_overrides={"neggrad": {"lr": 0.05, "epochs": 10.0}})
    m = runner.run_method("neggrad", prep, target, fast, 0)
    stop = m["equal"]["stopped_at"]
    assert m["equal"]["reached"] and stop["step"] < m["optimizer_steps"] and 100 - stop["forget_acc"] >= target
    assert all(100 - t["forget_acc"] < target for t in m["trajectory"][: m["trajectory"].index(stop)])
    assert "error" in run["methods"]["mnemonic"]  # backdoor's original has no mnemonic codes
    iterations = run["methods"]["invwnn"]["config"]["iterations"]  # the tuned value for backdoor
    assert 1 <= len(run["methods"]["invwnn"]["trajectory"]) <= iterations  # one check per rewind, to its own stop
    assert res["tuning"]["scenario"]["name"] == "backdoor"  # the packaged record, copied in
    assert run["methods"]["neggrad"]["config"]["lr"] == res["tuning"]["methods"]["neggrad"]["chosen"]["lr"]
    assert run["data"]["test"]["pool"] == "test" and run["data"]["val"]["pool"] == "train"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["name"] for r in rows[:2]] == ["Original", "Retrain"] and "ASR" in rows[0]
    table = (out / "table.md").read_text()
    assert "| Retrain |" in table and "ASR" in table and "mnemonic" in table and "RMIA AUC" in table
    # a rerun (a new process: nothing memoised) takes the original and the retrained model from the cache,
    # and the finished rows from the log
    logged = read_log(out / "units.jsonl")
    assert len(logged) == 5 and all(k.startswith("backdoor/0/") for k in logged)
    prepare._PREPARED.clear()
    r2 = CliRunner().invoke(bench, base + ["--methods", "neggrad"], catch_exceptions=False)
    assert r2.exit_code == 0, r2.output
    assert read_log(out / "units.jsonl") == logged  # nothing ran again
    res2 = json.loads((out / "results.json").read_text())
    again, first = res2["runs"][0]["methods"]["neggrad"], run["methods"]["neggrad"]
    assert again["budget"]["seconds"] == first["budget"]["seconds"] and again["trajectory"] == first["trajectory"]
    assert res2["runs"][0]["original"]["cache_hit"] and res2["runs"][0]["retrain"]["cache_hit"]
    assert res2["runs"][0]["retrain"]["UA"] == pytest.approx(target)


def test_equal_forgetting_table_is_over_reaching_seeds_only():
    def result(ua, reached, g):
        m = {"RA": 90.0, "UA": ua, "TA": 80.0, "MIA": 10.0, "gap": g, "seconds": 1.0, "time_ratio": 0.1}
        return {"stop_mode": "step", "budget": dict(m), "equal": {**m, "reached": reached}}

    ref = {"RA": 90.0, "UA": 10.0, "TA": 80.0, "MIA": 10.0, "gap": 0.0, "seconds": 9.0}
    gaps = {"a": [(True, 1.0), (True, 3.0), (False, 0.1)],   # 2/3, mean 2.0 over the two
            "b": [(True, 2.5), (True, 2.5), (True, 2.5)],    # 3/3: the only row that may be bold
            "c": [(False, 0.0), (False, 0.0), (False, 0.0)]}  # never: no figures at all
    runs = [{"seed": i, "original": dict(ref), "retrain": dict(ref),
             "methods": {n: result(10.0, *gaps[n][i]) for n in gaps}} for i in range(3)]
    results = {"scenario": {"name": "random10"}, "bench": {"methods": list(gaps)}, "runs": runs}
    rows = {(r["name"], r["protocol"]): r for r in report.summarise(results)}
    assert rows[("a", "equal")]["gap"] == pytest.approx(2.0) and rows[("a", "equal")]["reached"] == 2
    assert rows[("a", "budget")]["gap"] == pytest.approx((1.0 + 3.0 + 0.1) / 3)  # budget: every seed
    assert rows[("c", "equal")]["reached"] == 0 and "gap" not in rows[("c", "equal")]
    table = report.markdown(results, report.summarise(results))
    equal = table.split("## default budget")[0]
    assert "| **b (step)** |" in equal and "**a" not in equal
    line_c = next(line for line in equal.splitlines() if line.startswith("| c (step)"))
    assert "not reached in any seed" in line_c and "0/3" in line_c and "0.00" not in line_c
    assert next(line for line in equal.splitlines() if line.startswith("| a (step)")).endswith("| 2/3 |")


def test_recorded_command_is_the_one_given():
    for args in (["--scenario", "random10", "--no-progress"], ["--scenario", "class", "--seeds", "2", "--quick"],
                 ["--protocol", "as-run", "--phase", "bench", "--scenario", "class,random10"]):
        ctx = bench.make_context("bench", list(args))
        assert _command(ctx) == "invwnn bench " + " ".join(args)


def test_panel_is_the_as_run_protocol_of_bench(tmp_path):
    for cmd, args in ((panel, []), (bench, ["--protocol", "as-run"])):
        r = CliRunner().invoke(cmd, args + ["--networks", "nope", "--out", str(tmp_path)])
        assert r.exit_code == 2 and "unknown network 'nope'" in r.output, r.output
    r = CliRunner().invoke(bench, ["--phase", "tune", "--tuned", "none", "--scenario", "random10"])
    assert r.exit_code == 2 and "--phase tune writes records" in r.output
    r = CliRunner().invoke(bench, ["--phase", "all", "--scenario", "random10,paper", "--tuned", str(tmp_path / "t")])
    assert r.exit_code == 2 and "paper has no validation split" in r.output and not (tmp_path / "t").exists()


@pytest.mark.slow  # two tiny scenarios' originals and Retrains for the tuning seed and seed 0: about a minute
def test_phase_all_searches_then_benches_every_scenario_on_one_log(tmp_path):
    tuned, out = tmp_path / "tuned", tmp_path / "results"
    args = ["--phase", "all", "--scenario", "random10,class", "--methods", "neggrad", "--trials", "1", "--quick",
            "--train-size", "300", "--val-size", "100", "--test-size", "100", "--epochs", "1", "--width", "4",
            "--seeds", "1", "--references", "0", "--tuned", str(tuned), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--doc", str(tmp_path / "docs" / "bench.md"), "--no-progress"]
    r = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    command = json.loads((out / "class" / "results.json").read_text())["command"]
    doc = (tmp_path / "docs" / "bench.md").read_text()
    assert f"Generated by `{command}`" in doc and "| neggrad |" in doc and "[class](bench-class.md)" in doc
    for name in ("random10", "class"):
        assert f"Command: `{command}`" in (tmp_path / "docs" / f"bench-{name}.md").read_text()
        assert (tmp_path / "docs" / f"bench-{name}-gap.png").stat().st_size > 0
        chosen, record = search.load(name, tuned)
        assert set(chosen) == {"neggrad"} and (tuned / f"{name}.optuna.log").is_file()
        res = json.loads((out / name / "results.json").read_text())
        assert res["tuning"]["sha256"] == record["sha256"]  # the bench ran on the record just written
        assert res["runs"][0]["methods"]["neggrad"]["config"]["lr"] == chosen["neggrad"]["lr"]
    logged = read_log(out / "units.jsonl")
    assert len([k for k in logged if "/neggrad/seed100/" in k]) == 2 and len(logged) == 4  # 2 studies, 2 rows
