"""The bench at the paper's scale: ``invwnn bench --scenario paper --arch resnet18 --dataset
cifar10 --data-root FIXTURE --quick`` on a CIFAR-format folder the test writes (tiny width, one
epoch), the whole training set with half of it forgotten, and the mixed-precision guard."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from _cifar_fixture import write_cifar10
from invwnn.bench import runner, scenarios
from invwnn.cli.bench import bench
from invwnn.errors import InputError


def test_paper_scenario_defaults_are_the_papers_setting():
    c = scenarios.scenario_config("paper")
    assert (c.arch, c.width, c.dataset, c.forget_fraction) == ("resnet18", 64, "cifar10", 0.5)
    assert c.train_size == 0 and c.test_size == 0 and c.val_size == 0  # whole sets, no validation split
    assert scenarios.scenario_config("paper", quick=True).val_size == 0


@pytest.mark.slow  # a whole bench, about 9 s
def test_paper_bench_runs_on_a_cifar_fixture_with_the_whole_training_set(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=40, n_test=50)
    out = tmp_path / "out"
    args = ["--scenario", "paper", "--arch", "resnet18", "--dataset", "cifar10", "--data-root", str(tmp_path / "cifar"),
            "--quick", "--width", "4", "--train-size", "0", "--test-size", "0", "--epochs", "1",
            "--methods", "finetune,invwnn-linear", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--tuned", "none", "--no-progress"]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    run = results["runs"][0]
    assert run["sizes"]["train"] == 200 and run["sizes"]["forget"] == 100 and run["sizes"]["test"] == 50
    assert results["scenario"]["arch"] == "resnet18" and results["scenario"]["dataset"] == "cifar10"
    for name in ("finetune", "invwnn-linear"):
        assert "error" not in run["methods"][name], run["methods"][name]
        assert set(run["methods"][name]["equal"]) >= {"RA", "UA", "TA", "MIA", "reached"}
    assert "| Retrain |" in (out / "table.md").read_text()


def test_mixed_precision_needs_a_cuda_device():
    with pytest.raises(InputError, match="needs a CUDA --device"):
        runner.BenchConfig(device="cpu", amp=True)
    result = CliRunner().invoke(bench, ["--scenario", "paper", "--amp", "--device", "cpu", "--quick"])
    assert result.exit_code != 0 and "needs a CUDA --device" in result.output
