"""`invwnn audit`: references of the model's own architecture, the report, and clear refusals."""
from __future__ import annotations

import json

from click.testing import CliRunner

from invwnn.audit.verdict import standard_error, verdict
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


def test_verdict_reads_the_auc_against_its_standard_error():
    ref = {"RMIA_AUC": 50.0}
    assert standard_error(50.0, 300, 1000) < standard_error(50.0, 30, 100)
    assert "still carries a trace" in verdict({"RMIA_AUC": 65.0}, ref, 300, 1000)
    assert "indistinguishable" in verdict({"RMIA_AUC": 52.0}, ref, 300, 1000)
    assert "indistinguishable" in verdict({"RMIA_AUC": 58.0}, ref, 20, 20)  # too few images to tell
    assert "less familiar" in verdict({"RMIA_AUC": 40.0}, ref, 300, 1000)
