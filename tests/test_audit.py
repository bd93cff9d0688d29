"""`invwnn audit`: references of the model's own architecture, the report, and clear refusals."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from invwnn.audit.verdict import BELOW_Z, KINDS, TRACE_Z, decide, standard_error, verdict
from invwnn.cli.main import main
from _apply_fixtures import tiny_original, unseen_lenet


def test_audit_trains_references_and_writes_its_report(tmp_path_factory, tmp_path):
    root = tiny_original(tmp_path_factory.getbasetemp())
    report_path = tmp_path / "audit.json"
    r = CliRunner().invoke(main, ["audit", "--model", str(root / "model.pt"), "--forget", str(root / "forget"),
                                  "--retain", str(root / "retain"), "--test", str(root / "test"),
                                  "--references", "2", "--epochs", "2", "--report", str(report_path), "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads(report_path.read_text())
    assert r.output.strip().splitlines()[-1] == report["verdict"] and "AUC" in report["verdict"]
    # the yardstick: the mean of each reference's AUC against the other; the first is the report's reference
    assert len(report["yardsticks"]) == 2 and report["yardsticks"][0] == report["reference"]["RMIA_AUC"]
    d = report["decision"]
    assert d["yardstick"] == pytest.approx(sum(report["yardsticks"]) / 2) and d["kind"] in KINDS
    assert d["auc"] == report["figures"]["RMIA_AUC"] and d["z"] == pytest.approx((d["auc"] - d["yardstick"]) / d["se"])
    assert (tmp_path / "audit.png").stat().st_size > 0 and report["plot"] == str(tmp_path / "audit.png")
    assert report["recipe"]["epochs"] == 2 and report["recipe"]["from"].startswith("flags and the model file")
    assert len(report["references"]) == 2 and all(0 < ref["RA"] <= 100 for ref in report["references"])
    assert set(report["figures"]) >= {"RMIA_AUC", "RMIA_TPR1", "RMIA_acc", "RMIA_tail", "JS_forget", "JS_test"}
    split = json.loads((root / "split.json").read_text())
    assert report["images"]["forget"] == len(split["forget_indices"])
    # the test split cut in two: half the population, half held-out candidates (the forget classes': all)
    assert report["images"]["population"] + report["images"]["heldout"] == len(split["test_indices"])


def test_audit_refuses_what_it_cannot_do_in_one_line(tmp_path_factory, tmp_path):
    root = tiny_original(tmp_path_factory.getbasetemp())
    lenet = unseen_lenet(tmp_path_factory.getbasetemp())
    data = ["--forget", str(root / "forget"), "--retain", str(root / "retain"), "--test", str(root / "test")]
    cases = [(["--model", str(root / "model.pt"), *data[:4]], "needs --test"),
             (["--model", str(root / "model.pt"), *data, "--references", "1"], "--references"),
             (["--model", str(lenet / "lenet.pt"), "--forget", str(lenet / "forget.pt"), "--retain",
               str(lenet / "retain.pt"), "--test", str(lenet / "test.pt"), "--size", "28x28", "--channels", "1"],
              "which a torchscript file does not give")]
    for args, message in cases:
        r = CliRunner().invoke(main, ["audit", *args, "--report", str(tmp_path / "never.json"), "--quiet"])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_decide_is_one_sided_with_its_thresholds_on_constructed_numbers():
    """The rule on numbers built by hand: only a forget set more familiar than the yardstick is a
    trace; a low AUC is a false alarm unless far below; the boundaries are strict."""
    assert standard_error(50.0, 300, 1000) < standard_error(50.0, 30, 100)
    n_f, n_h = 219, 110  # the ResNet-18: combined standard error about 5 points
    yards = [47.7, 51.7]  # yardstick: their mean, 49.7
    se = decide(49.7, yards, n_f, n_h).se
    assert decide(49.7, yards, n_f, n_h).yardstick == pytest.approx(49.7)
    assert decide(49.7, yards, n_f, n_h).z == pytest.approx(0.0, abs=1e-9)
    # the exact answer, AUC 43.7 against 49.7: within what never-trained models show
    assert decide(43.7, yards, n_f, n_h).kind == "none"
    # just above and just below the trace threshold (its AUC "bar" is yardstick + TRACE_Z se)
    bar = decide(49.7 + TRACE_Z * se, yards, n_f, n_h).bar
    assert bar == pytest.approx(49.7 + TRACE_Z * se, abs=0.05)
    assert decide(bar + 0.3, yards, n_f, n_h).kind == "trace"
    assert decide(bar - 0.3, yards, n_f, n_h).kind == "none"
    assert decide(64.8, yards, n_f, n_h).kind == "trace"  # the original
    # far below: the Streisand effect, and only there
    assert decide(49.7 - (BELOW_Z + 0.3) * se, yards, n_f, n_h).kind == "less familiar"
    assert decide(49.7 - (BELOW_Z - 0.3) * se, yards, n_f, n_h).kind == "none"
    assert decide(30.0, yards, n_f, n_h).kind == "less familiar"
    # the same difference with too few images to tell is no trace
    assert decide(58.0, [50.0, 50.0], 20, 20).kind == "none" and decide(58.0, [50.0, 50.0], 3000, 3000).kind == "trace"
    # a yardstick that moves moves the bar: the same AUC against a higher mean is no trace
    assert decide(60.0, [48.0, 50.0], 300, 1000).kind == "trace"
    assert decide(60.0, [56.0, 58.0], 300, 1000).kind == "none"


def test_verdict_words_the_figures_with_their_uncertainty():
    yards = [47.7, 51.7]
    none = verdict(decide(51.2, yards, 219, 110), 2)
    assert "No more trace than a model never trained on it" in none
    assert "AUC 51.2% against 49.7%" in none and "2 references" in none and "+1.5 ± " in none
    assert "docs/results/audit.md" in none
    assert "still carries a trace" in verdict(decide(64.8, yards, 219, 110), 2)
    d = decide(51.2, yards, 219, 110)
    assert "passed in under 1 audit in 20" in none and f"a trace under {TRACE_Z * d.se:.1f} points can hide" in none
    assert f"above {d.bar:.1f}%" in none and d.bar == pytest.approx(49.7 + TRACE_Z * d.se)
    assert "less familiar than unseen images" in verdict(decide(20.0, yards, 219, 110), 2)
    assert set(KINDS) == {"trace", "none", "less familiar"}
