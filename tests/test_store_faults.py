"""A full disk and a read-only store: one-line error, exit code 2, and the store still opens,
verifies and resumes. Writes fail inside zarr's own file writer, so zarr's temporary-file handling
is exercised as on a real full or read-only device."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest
import zarr.storage._local as zarr_local
from click.testing import CliRunner

from test_trajgen_cli import one_line_error, tree_digest
from trajgen import store
from trajgen.cli import main

ARGS = ["--runs", "2", "--steps", "8", "--every", "1", "--workers", "0", "--archs", "mlp", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A complete, verified 2-run store, copied by each test that changes it."""
    path = tmp_path_factory.mktemp("faults") / "s.zarr"
    assert invoke("collect", "--store", path, *ARGS).exit_code == 0
    return path


def fill_disk_when(monkeypatch, first_failing) -> None:
    """From the first zarr file write for which ``first_failing(path, data)`` holds on, the device
    is full: half of the bytes reach zarr's temporary file, then the write raises ENOSPC."""
    real = zarr_local._put
    full = []

    def put(path, value, exclusive=False):
        data = bytes(value.as_buffer_like())
        if full or first_failing(str(path), data):
            full.append(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with zarr_local._atomic_write(path, "wb", exclusive=exclusive) as f:
                f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, value, exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)


def partial_files(path) -> list[str]:
    return [str(p) for p in path.rglob("*.partial")]


@pytest.mark.parametrize("where", ["history chunk", "complete flag"])
def test_a_full_disk_mid_run_is_one_line_and_the_store_verifies(tmp_path, monkeypatch, where):
    path = tmp_path / "s.zarr"
    if where == "history chunk":
        fill_disk_when(monkeypatch, lambda p, _: "run-000001/history/c/" in p)
    else:
        fill_disk_when(monkeypatch, lambda p, d: "run-000001" in p and b'"complete": true' in d)
    result = invoke("collect", "--store", path, *ARGS)
    one_line_error(result, "cannot write run run-000001", "No space left on device", "rerun the same command")
    monkeypatch.undo()  # space is freed
    assert not partial_files(path)
    assert store.complete_runs(path) == ["run-000000"]  # the half-written run is invisible ...
    assert store.run_names(store.open_store(path)) == ["run-000000", "run-000001"]  # ... though present
    verified = invoke("verify", path)
    assert verified.exit_code == 0 and "1 complete runs checked, 0 problems" in verified.output
    assert invoke("collect", "--store", path, *ARGS).exit_code == 0  # the same command resumes
    assert store.complete_runs(path) == ["run-000000", "run-000001"]
    assert invoke("verify", path).exit_code == 0


@pytest.mark.parametrize("where", ["index page", "index count"])
def test_a_full_disk_at_the_index_write_loses_no_run(tmp_path, monkeypatch, where):
    path = tmp_path / "s.zarr"
    if where == "index page":
        fill_disk_when(monkeypatch, lambda p, d: p.endswith("index/p000000/zarr.json") and b"run-000001" in d)
    else:  # the page is written, the count that commits it is not
        fill_disk_when(monkeypatch, lambda p, d: p.endswith("index/zarr.json") and b'"count": 2' in d)
    one_line_error(invoke("collect", "--store", path, *ARGS), "cannot write the store's index",
                   "No space left on device")
    monkeypatch.undo()
    assert store.complete_runs(path) == ["run-000000"]
    verified = invoke("verify", path)  # run-000001 is whole, only the index lacks it
    assert verified.exit_code == 1 and "problem: run-000001: complete but not in the index" in verified.output
    resumed = invoke("collect", "--store", path, *ARGS)
    assert resumed.exit_code == 0 and "trained 0 runs, skipped 2" in resumed.output
    assert invoke("verify", path).exit_code == 0


def make_read_only(path, monkeypatch) -> None:
    """Make the store at ``path`` read-only. As a normal user: chmod, a real refusal by the file
    system. As root, whom permission bits do not stop (and who should not remount anything for a
    test): every zarr file write and every writability probe under ``path`` raises EROFS, as on a
    read-only mount."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return
    real_put, real_tempfile = zarr_local._put, tempfile.TemporaryFile

    def refuse(target):
        if str(target).startswith(str(path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    def put(p, value, exclusive=False):
        refuse(p)
        return real_put(p, value, exclusive)

    def temporary_file(*args, dir=None, **kwargs):
        refuse(dir)
        return real_tempfile(*args, dir=dir, **kwargs)

    monkeypatch.setattr(zarr_local, "_put", put)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)


@pytest.fixture
def read_only_copy(two_runs, tmp_path, monkeypatch):
    path = tmp_path / "ro.zarr"
    shutil.copytree(two_runs, path)
    make_read_only(path, monkeypatch)
    yield path
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)  # let pytest clean up


def test_a_read_only_store_opens_verifies_and_refuses_writes_in_one_line(read_only_copy):
    path = read_only_copy
    before = tree_digest(path)
    info = invoke("info", path)
    assert info.exit_code == 0 and "2 complete" in info.output
    verified = invoke("verify", path)
    assert verified.exit_code == 0 and "2 complete runs checked, 0 problems" in verified.output
    assert invoke("verify", path, "--repair").exit_code == 0  # nothing to repair: nothing written
    one_line_error(invoke("collect", "--store", path, *ARGS, "--runs", 3), "cannot write to")
    assert tree_digest(path) == before


def test_repairing_a_read_only_store_is_one_line_and_changes_nothing(two_runs, tmp_path, monkeypatch):
    path = tmp_path / "drift.zarr"
    shutil.copytree(two_runs, path)
    store.set_index(store.open_store(path, "a"), {})  # both runs fell out of the index
    make_read_only(path, monkeypatch)
    before = tree_digest(path)
    try:
        one_line_error(invoke("verify", path, "--repair"), "cannot write the store's index")
    finally:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert tree_digest(path) == before
