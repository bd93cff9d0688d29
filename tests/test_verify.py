import numpy as np
import pytest
from click.testing import CliRunner

from trajgen import store
from trajgen.cli import main
from trajgen.collect import CollectConfig, collect
from trajgen.verify import verify


@pytest.fixture
def two_runs(tmp_path):
    path = str(tmp_path / "s.zarr")
    collect(CollectConfig(store=path, runs=2, steps=8, every=4, archs=("mlp",), workers=0, progress=False))
    return path


def test_a_clean_store_verifies(two_runs):
    report = verify(two_runs)
    assert report.ok and report.runs_checked == 2
    result = CliRunner().invoke(main, ["verify", two_runs])
    assert result.exit_code == 0 and "2 complete runs checked, 0 problems" in result.output


def test_nan_in_a_run_not_marked_diverged_is_found(two_runs):
    root = store.open_store(two_runs, "a")
    root["runs"]["run-000001"]["history"][5, 1] = np.nan
    report = verify(two_runs)
    assert report.problems == ["run-000001: NaN or Inf in history (coordinates from 0) of a run not marked diverged"]
    assert CliRunner().invoke(main, ["verify", two_runs]).exit_code == 1


def test_wrong_shape_missing_attribute_and_wrong_dtype_are_found(two_runs):
    root = store.open_store(two_runs, "a")
    run0, run1 = root["runs"]["run-000000"], root["runs"]["run-000001"]
    run0["step"].resize((2,))
    del run1.attrs["layers"]
    problems = verify(two_runs).problems
    assert "run-000000: step has shape (2,), expected (3,)" in problems
    assert any(p.startswith("run-000001: unreadable (KeyError") for p in problems)
    n = run0["history"].shape[0]
    del root["runs"]["run-000000"]["history"]
    run0.create_array("history", shape=(n, 3), dtype="float64", chunks=(n, 3))
    assert any("history is float64" in p for p in verify(two_runs).problems)


def test_repair_fixes_the_index_and_never_deletes_a_complete_run(two_runs):
    root = store.open_store(two_runs, "a")
    root["runs"]["run-000001"].attrs["complete"] = False  # as if killed mid-write
    root.attrs["index"] = {"run-000001": {"arch": "mlp"}}  # ... and run-000000 never indexed
    report = verify(two_runs)
    assert set(report.problems) == {"run-000001: in the index but not complete",
                                    "run-000000: complete but not in the index"}
    repaired = verify(two_runs, repair=True)
    assert repaired.repaired == ["dropped run-000001 from the index", "added run-000000 to the index"]
    assert verify(two_runs).ok
    assert store.run_names(store.open_store(two_runs)) == ["run-000000", "run-000001"]
    assert store.complete_runs(two_runs) == ["run-000000"]
