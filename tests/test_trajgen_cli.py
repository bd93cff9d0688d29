"""The commands as a user meets them: one-line errors, exit code 2, and a store left as it was."""
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trajgen.cli import main
from trajgen.collect import CollectConfig, collect


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def one_run_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    collect(CollectConfig(store=str(path), runs=1, steps=8, every=4, workers=0, progress=False))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("flags, needles", [
    (["--archs", "cnn,resnet"], ["unknown architecture 'resnet'", "valid: mlp, cnn, vit"]),
    (["--optimizers", "adam,lion"], ["unknown optimizer 'lion'", "sgd, momentum, nesterov, adam"]),
    (["--every", "16", "--steps", "8"], ["--every 16 is larger than --steps 8"]),
    (["--dataset", "mnist"], ["mnist not found", "--data-root"]),
    (["--data-root", "/nonexistent/dir"], ["is not a directory"]),
])
def test_bad_collect_flags_leave_the_store_as_it_was(one_run_store, flags, needles):
    before = tree_digest(one_run_store)
    one_line_error(invoke("collect", "--store", one_run_store, "--runs", 2, "--workers", 0, *flags), *needles)
    assert tree_digest(one_run_store) == before


def test_store_of_another_schema_version_is_refused_untouched(tmp_path, one_run_store):
    meta = one_run_store / "zarr.json"
    old = tmp_path / "old.zarr"
    old.mkdir()
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema_version"] = 99
    (old / "zarr.json").write_text(json.dumps(doc))
    before = tree_digest(old)
    one_line_error(invoke("collect", "--store", old, "--runs", 1, "--workers", 0), "schema version 99")
    one_line_error(invoke("info", old), "schema version 99")
    assert tree_digest(old) == before


def test_unwritable_store_path(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(invoke("collect", "--store", tmp_path / "f" / "s.zarr", "--runs", 1, "--workers", 0),
                   "not a directory")
    one_line_error(invoke("collect", "--store", "/proc/s.zarr", "--runs", 1, "--workers", 0), "cannot write")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    one_line_error(invoke("collect", "--store", tmp_path / "s.zarr", "--dataset", "mnist", "--workers", 0),
                   "mnist not found")
    assert not (tmp_path / "s.zarr").exists()


def test_info_text_and_json(one_run_store):
    result = invoke("info", one_run_store, "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["runs"] == 1 and d["by_arch"] == {"mlp": 1} and d["snapshots"] == 3
    assert d["bytes_raw"] == 4 * d["coordinates"] * 3 and d["compression_ratio"] > 0
    text = invoke("info", one_run_store).output
    assert "1 complete" in text and "mlp 1" in text


def test_info_on_something_that_is_not_a_store(tmp_path):
    one_line_error(invoke("info", tmp_path), "not a trajgen store")


def test_collect_then_resume_from_the_command_line(tmp_path):
    args = ["collect", "--store", tmp_path / "s.zarr", "--runs", 2, "--steps", 8, "--every", 4,
            "--workers", 0, "--archs", "mlp", "--quiet"]
    first = invoke(*args)
    assert first.exit_code == 0 and "trained 2 runs" in first.output
    second = invoke(*args)
    assert second.exit_code == 0 and "trained 0 runs, skipped 2" in second.output
