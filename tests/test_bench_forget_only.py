"""invwnn.bench.forget_only: the knob chosen on validation by the issue's rule, each row run as a user
gives it to `invwnn apply`, and `invwnn bench --protocol forget-only` resuming from its log."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from invwnn.bench import forget_only
from invwnn.cli.bench import bench


def run(value, fraction, drop):
    return {"value": value, "fraction": fraction, "drop": drop}


def test_the_choice_moves_furthest_within_a_point_of_validation_accuracy():
    runs = [run(1.5, 0.4, 0.2), run(3.0, 0.9, 0.8), run(6.0, 1.4, 0.5), run(12.0, 1.0, 0.1), run(24.0, 2.0, 3.0)]
    # 6 and 12 both reach Retrain's forget error (capped at 1): the smaller value; 24 costs 3 points
    assert forget_only.choose(runs, 3.0) == (6.0, "chosen on validation")
    assert forget_only.choose([run(1.5, 0.9, 1.5), run(3.0, float("nan"), 0.0)], 3.0)[0] == 3.0  # none fits: default


def test_a_row_runs_with_its_rewinder_and_fixed_settings_as_a_user_gives_them():
    assert forget_only.overrides("invwnn-episodes", 6.0) == {"snapshots": 5, "rewinder": "learned",
                                                             "predictor": "episodes", "horizon": 6.0}
    assert forget_only.overrides("invwnn+-linear", None) == {"rewinder": "linear"}
    assert forget_only.overrides("neggrad", 1e-4) == {"lr": 1e-4}


def test_bad_cases_and_rows_are_one_line_exit_2(tmp_path):
    for args in (["--scenario", "class"], ["--methods", "salun"]):
        r = CliRunner().invoke(bench, ["--protocol", "forget-only", "--out", str(tmp_path), *args])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "unknown forget-only" in r.output


@pytest.mark.slow  # two LeNet trainings and one unlearning run: about 30 s
def test_the_study_writes_its_table_and_a_rerun_runs_nothing(tmp_path, monkeypatch):
    args = ["--protocol", "forget-only", "--scenario", "lenet-random", "--seeds", "1", "--methods", "neggrad",
            "--settings", "defaults", "--out", str(tmp_path), "--no-progress"]
    r = CliRunner().invoke(bench, [*args, "--doc", str(tmp_path / "forget-only.md")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "forget-only.md").read_text() == (tmp_path / "table.md").read_text()
    assert f"Command: `{results['command']}`" in (tmp_path / "table.md").read_text()
    (one,) = results["runs"]
    assert one["row"] == "neggrad" and one["split"] == "test" and one["config"]["lr"] == 1e-3
    assert one["forget_err_retrain"] > one["forget_err_before"]  # Retrain never saw the forget images
    assert "| lenet-random | neggrad | lr 0.001 (default) |" in (tmp_path / "table.md").read_text()
    monkeypatch.setattr(forget_only, "run_one", lambda *a: pytest.fail("a finished run ran again"))
    r = CliRunner().invoke(bench, [*args, "--report-only"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == results["runs"]
