import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from trajgen import store
from trajgen.cli import main
from trajgen.collect import CollectConfig, collect
from trajgen.verify import verify


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("verify") / "s.zarr")
    collect(CollectConfig(store=path, runs=2, steps=8, every=4, archs=("mlp",), workers=0, progress=False))
    return path


@pytest.fixture
def two_runs(clean_store, tmp_path):
    """A fresh copy of a clean 2-run store (mlp, 3 snapshots each), for a test to damage."""
    path = str(tmp_path / "s.zarr")
    shutil.copytree(clean_store, path)
    return path


def rewrite(group, key, values) -> None:
    """Replace array ``key`` of ``group`` by ``values`` (any dtype or shape)."""
    del group[key]
    group.create_array(key, data=values)


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
    store.drop_from_index(root, ["run-000000"])  # run-000000 never indexed
    root["runs"]["run-000001"].attrs["complete"] = False  # ... and run-000001 as if killed mid-write
    report = verify(two_runs)
    assert set(report.problems) == {"run-000001: in the index but not complete",
                                    "run-000000: complete but not in the index"}
    repaired = verify(two_runs, repair=True)
    assert repaired.repaired == ["dropped run-000001 from the index", "added run-000000 to the index"]
    assert verify(two_runs).ok
    assert store.run_names(store.open_store(two_runs)) == ["run-000000", "run-000001"]
    assert store.complete_runs(two_runs) == ["run-000000"]


@pytest.mark.parametrize("key, dtype", [("kind", np.int64), ("layer", np.int32), ("pos", np.int64),
                                        ("step", np.float32), ("loss", np.float64), ("acc", np.float16)])
def test_every_array_of_the_wrong_dtype_is_found(two_runs, key, dtype):
    group = store.open_store(two_runs, "a")["runs"]["run-000000"]
    values = group[key][:]
    rewrite(group, key, values.astype(dtype))  # same values, same shape: only the dtype is wrong
    assert verify(two_runs).problems == [f"run-000000: {key} is {np.dtype(dtype)} with 1 dims, "
                                         f"expected 1-D {values.dtype}"]


@pytest.mark.parametrize("damage, problem", [
    ("history_rows", "run-000000: history has 55051 coordinates, layer table says 55050"),
    ("kind_shape", "run-000000: kind has shape (55049,), expected (55050,)"),
    ("layer_values", "run-000000: layer does not match the layer table"),
    ("kind_values", "run-000000: kind does not match the layer table"),
    ("layer_table", "run-000000: the layer table's offsets or sizes do not add up"),
    ("missing_array", "run-000000: unreadable (KeyError: 'loss')"),
    ("missing_accuracy", "run-000000: unreadable (KeyError: 'final_test_acc')"),
    ("bad_spec", "run-000000: unreadable (KeyError: 'arch')"),
])
def test_wrong_shapes_contents_and_missing_parts_are_found(two_runs, damage, problem):
    group = store.open_store(two_runs, "a")["runs"]["run-000000"]
    n = group["history"].shape[0]
    assert n == 55050  # the messages above name this mlp's size
    if damage == "history_rows":
        rewrite(group, "history", np.zeros((n + 1, 3), np.float32))
    elif damage == "kind_shape":
        rewrite(group, "kind", group["kind"][:-1])
    elif damage == "layer_values":
        group["layer"][:1] = 999  # a row of the layer table that does not exist
    elif damage == "kind_values":
        group["kind"][:1] = (group["kind"][0] + 1) % 6
    elif damage == "layer_table":
        layers = group.attrs["layers"]
        layers[1]["offset"] += 1
        group.attrs["layers"] = layers
    elif damage == "missing_array":
        del group["loss"]
    elif damage == "missing_accuracy":
        del group.attrs["final_test_acc"]
    elif damage == "bad_spec":
        group.attrs["spec"] = {"name": "run-000000"}
    assert verify(two_runs).problems == [problem]
    if damage.startswith("missing") or damage == "bad_spec":  # readers get one clear error, not a KeyError
        with pytest.raises(store.StoreError, match="run-000000 is malformed"):
            store.open_run(two_runs, "run-000000")


@pytest.mark.parametrize("damage", ["count", "page", "entry", "summary"])
def test_a_malformed_index_is_one_line_for_readers_and_rebuilt_by_repair(two_runs, damage):
    group = store.open_store(two_runs, "a")["index"]
    page = group["p000000"]
    if damage == "count":
        group.attrs["count"] = "two"
    elif damage == "page":
        page.attrs["entries"] = {"run-000000": 5}
    elif damage == "entry":
        page.attrs["entries"] = [5, 6]
    else:
        page.attrs["entries"] = [{"run": "run-000000", "arch": "mlp"}] * 2
    r = CliRunner().invoke(main, ["info", two_runs])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "index is not a mapping" in r.output, r.output
    assert verify(two_runs).problems[0].startswith("the store's index is not a mapping")
    assert verify(two_runs, repair=True).repaired
    assert verify(two_runs).ok and store.complete_runs(two_runs) == ["run-000000", "run-000001"]


def test_an_index_entry_that_differs_from_its_run_is_found_and_rewritten(two_runs):
    root = store.open_store(two_runs, "a")
    idx = store.index(root)
    idx["run-000001"]["n_coords"] = 7
    store.set_index(root, idx)
    assert verify(two_runs).problems == ["run-000001: its index entry differs from the run"]
    assert verify(two_runs, repair=True).repaired == ["rewrote the index entry of run-000001"]
    n_coords = store.open_run(two_runs, "run-000001").history.shape[0]
    assert verify(two_runs).ok and store.index(store.open_store(two_runs))["run-000001"]["n_coords"] == n_coords
