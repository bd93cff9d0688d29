import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from trajgen import store
from trajgen.collect import CollectConfig, collect, plan
from trajgen.spec import SpecError

SMALL = dict(runs=3, steps=32, every=2, progress=False)


def collect_cmd(path: str, workers: int) -> list[str]:
    """The command line of the SMALL collection, for tests that kill or watch a real process."""
    return [sys.executable, "-m", "trajgen.cli", "collect", "--store", path, "--workers", str(workers),
            "--quiet", "--runs", "3", "--steps", "32", "--every", "2"]


def wait_for(folder: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not os.path.isdir(folder):
        time.sleep(0.05)


def content(path) -> dict:
    """Every complete run's spec, per-snapshot records and a hash of its history's values."""
    root = store.open_store(path)
    out = {}
    for name in store.complete_runs(path, include_diverged=True):
        run = store.open_run(root, name)
        out[name] = (run.spec, run.step.tolist(), run.loss.tolist(), run.final_test_acc,
                     hashlib.sha256(run.history[:].tobytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ref") / "ref.zarr")
    collect(CollectConfig(store=path, workers=0, **SMALL))
    return content(path)


def test_every_run_array_is_parameters_by_snapshots(reference):
    assert sorted(reference) == ["run-000000", "run-000001", "run-000002"]
    for spec, steps, *_ in reference.values():
        assert steps == list(range(0, 33, 2))


@pytest.mark.slow  # a dask cluster, about 10 s
def test_two_workers_write_the_same_store_as_one(tmp_path, reference):
    path = str(tmp_path / "two.zarr")
    result = collect(CollectConfig(store=path, workers=2, **SMALL))
    assert result["trained"] == 3
    assert content(path) == reference
    children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in children if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]  # cluster shut down


def test_rerun_skips_complete_runs_and_indexes_orphans(tmp_path, reference):
    path = str(tmp_path / "s.zarr")
    collect(CollectConfig(store=path, workers=0, **{**SMALL, "runs": 2}))
    root = store.open_store(path, "a")
    store.set_index(root, {})  # as if killed after the runs completed but before they were indexed
    result = collect(CollectConfig(store=path, workers=0, **SMALL))
    assert (result["trained"], result["skipped"]) == (1, 2)
    assert content(path) == reference
    assert sorted(store.index(store.open_store(path))) == sorted(reference)


def test_changed_flags_on_an_existing_store_are_refused(tmp_path):
    path = str(tmp_path / "s.zarr")
    collect(CollectConfig(store=path, workers=0, **{**SMALL, "runs": 1}))
    before = content(path)
    with pytest.raises(SpecError, match="different spec"):
        collect(CollectConfig(store=path, workers=0, seed=1, **SMALL))
    assert content(path) == before


@pytest.mark.slow  # a kill drill, about 8 s
def test_resume_after_a_kill_gives_the_uninterrupted_store(tmp_path, reference):
    path = str(tmp_path / "killed.zarr")
    cmd = collect_cmd(path, workers=0)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"{path}/runs/run-000001/history", 120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = content(path)
    assert "run-000001" not in at_kill and "run-000002" not in at_kill  # killed mid-collection
    assert store.run_names(store.open_store(path))[-1] == "run-000001"  # a half-written run exists
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert content(path) == reference


KILL_AT_INDEX_COMMIT = """
import os, signal, sys
import zarr.storage._local as local
from trajgen.cli import main

real = local._put

def put(path, value, exclusive=False):  # SIGKILL when the count committing run-000001 is written
    if str(path).endswith("index/zarr.json") and b'"count": 2' in bytes(value.as_buffer_like()):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, value, exclusive)

local._put = put
sys.argv = ["trajgen", *sys.argv[1:]]
main()
"""


@pytest.mark.slow  # a kill drill, about 9 s
def test_a_kill_during_the_index_update_leaves_a_readable_index_and_resumes(tmp_path, reference):
    path = str(tmp_path / "killed-index.zarr")
    cmd = collect_cmd(path, workers=0)
    killed = subprocess.run([sys.executable, "-c", KILL_AT_INDEX_COMMIT, *cmd[3:]], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    root = store.open_store(path)
    assert len(root["index"]["p000000"].attrs["entries"]) == 2  # the page was written, not committed
    assert store.complete_runs(path) == ["run-000000"] and store.is_complete(root, "run-000001")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert content(path) == reference
    assert sorted(store.index(store.open_store(path))) == sorted(reference)


def test_plan_is_deterministic_and_sized():
    config = CollectConfig(runs=5, archs=("cnn", "vit"))
    assert plan(config) == plan(config)
    assert [s.arch.family for s in plan(config)] == ["cnn", "vit", "cnn", "vit", "cnn"]


@pytest.mark.slow  # a dask cluster and a kill drill, about 20 s
def test_a_killed_dask_worker_is_replaced_and_its_run_redone(tmp_path, reference):
    path = str(tmp_path / "worker-killed.zarr")
    proc = subprocess.Popen(collect_cmd(path, workers=2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"{path}/runs/run-000000/history", 180)
    workers = [pid for pid in map(int, subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                      text=True).stdout.split())
               if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0
    assert content(path) == reference


@pytest.mark.slow  # a collection in another process, about 6 s
def test_readers_see_only_complete_runs_while_a_collection_writes(tmp_path):
    from trajgen.info import describe

    path = str(tmp_path / "live.zarr")
    proc = subprocess.Popen(collect_cmd(path, workers=0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []
    while proc.poll() is None:
        if os.path.isfile(f"{path}/zarr.json"):
            try:
                runs = store.complete_runs(path)
            except store.StoreError:  # the root group is created by rename: absent, then whole
                continue
            for name in runs:
                assert store.open_run(path, name).history.shape[1] == 17
            seen.append((len(runs), describe(path)["runs"]))
        time.sleep(0.02)
    assert proc.returncode == 0
    counts = [n for n, _ in seen]
    assert counts == sorted(counts) and len(set(counts)) >= 2  # watched runs arrive one by one
    assert all(described >= n for n, described in seen)


def test_expected_cost_orders_runs_by_work():
    """The collector starts the longest runs first: the cost is linear in steps and in batch size and
    counts a cnn's activations (conv, norm, activation and pooling outputs) exactly for a known net."""
    from dataclasses import replace
    from trajgen.collect import expected_cost
    from trajgen.spec import ArchSpec

    spec = plan(CollectConfig(archs=("cnn",), runs=1, steps=64))[0]
    cnn = replace(spec, arch=ArchSpec("cnn", 8, 1, "relu"), batch_size=32)
    base = expected_cost(cnn, (1, 28, 28), 10)
    assert expected_cost(replace(cnn, steps=128), (1, 28, 28), 10) == 2 * base
    # one block: conv, BatchNorm and ReLU outputs of 8x28x28, max-pool and flatten 8x14x14, the head 10
    per_example = (expected_cost(replace(cnn, batch_size=64), (1, 28, 28), 10) - base) / (64 * 32)
    assert per_example == 3 * 8 * 28 * 28 + 2 * 8 * 14 * 14 + 10
    assert expected_cost(replace(cnn, arch=ArchSpec("cnn", 16, 1, "relu")), (1, 28, 28), 10) > base


def test_workers_keep_freed_memory_where_the_c_library_is_glibc():
    import platform
    from trajgen.train import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")  # mallopt accepted both settings
