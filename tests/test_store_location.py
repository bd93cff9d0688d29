"""``--store`` as a URL: ``file://`` URLs are the local path they name (collect, info, verify, and
the library's readers); ``memory://`` works in one process only and is refused, in one line, where
dask workers would need it. Object stores (s3://) and unknown schemes: tests/test_store_s3.py."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from trajgen import store
from trajgen.cli import main
from trajgen.collect import CollectConfig, collect

SMALL = ["--runs", "2", "--steps", "8", "--every", "4", "--archs", "mlp", "--quiet"]


def test_file_url_is_the_local_path(tmp_path):
    loc = store.location(f"file://{tmp_path}/a%20b.zarr")
    assert loc.path == tmp_path / "a b.zarr" and loc.shared
    assert store.location("file://localhost/x/y.zarr").path.as_posix() == "/x/y.zarr"
    assert store.location("data/traj.zarr").path.as_posix() == "data/traj.zarr"
    with pytest.raises(store.StoreError, match="another host"):
        store.location("file://nas/x.zarr")


def test_collect_info_verify_through_a_file_url(tmp_path):
    url = f"file://{tmp_path}/traj.zarr"
    runner = CliRunner()
    r = runner.invoke(main, ["collect", "--store", url, "--workers", "0", *SMALL])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "traj.zarr" / "zarr.json").is_file()  # the URL's path, not a folder named "file:"
    assert not list(tmp_path.glob("file*"))
    r = runner.invoke(main, ["info", url, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["runs"] == 2 and d["store"] == url
    r = runner.invoke(main, ["verify", url])
    assert r.exit_code == 0 and "2 complete runs checked, 0 problems" in r.output
    # rerunning resumes through the URL; the library's readers take it too
    r = runner.invoke(main, ["collect", "--store", url, "--workers", "0", *SMALL])
    assert "skipped 2 already complete" in r.output
    assert store.complete_runs(url) == ["run-000000", "run-000001"]
    assert store.open_run(url, "run-000001").history[:].shape[1] == 3


@pytest.mark.parametrize("command", ["collect", "episodes", "twins"])
def test_memory_store_is_refused_for_workers(tmp_path, command):
    r = subprocess.run([sys.executable, "-m", "trajgen.cli", command, "--store", "memory://t.zarr",
                        "--workers", "2", "--runs", "1", "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "memory://" in lines[0] and "cannot reach" in lines[0], r.stderr
    assert not list(tmp_path.iterdir())


def test_memory_store_in_one_process():
    url = "memory://trajgen-test/in-process.zarr"
    collect(CollectConfig(store=url, workers=0, runs=1, steps=8, every=4, archs=("mlp",), progress=False))
    assert store.complete_runs(url) == ["run-000000"]
    run = store.open_run(url, "run-000000")
    assert np.isfinite(run.history[:]).all() and run.history.shape[1] == 3
    with pytest.raises(store.StoreError, match="no zarr.json"):
        store.open_store("memory://trajgen-test/nothing-here.zarr")


def test_time_chunks_are_balanced():
    """The fewest time chunks of at most 128 snapshots, of equal length: a run never ends in a
    chunk of a snapshot or two (which delta coding cannot shrink)."""
    assert [store.time_chunk_for(n) for n in (1, 33, 128, 129, 151, 193, 257, 513)] == \
        [1, 33, 128, 65, 76, 97, 86, 103]
