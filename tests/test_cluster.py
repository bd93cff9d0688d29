"""A real cluster, on this machine only: an S3-compatible server on 127.0.0.1 (moto), a dask
scheduler and two workers as processes of their own (``dask scheduler``, ``dask worker``), and
``trajgen collect --scheduler ... --store s3://...`` as a user runs it. A worker killed with SIGKILL
mid-run, or the collecting client killed and the command rerun, leaves the store equal, array for
array and run record for run record, to an uninterrupted collection's; ``trajgen verify`` finds a
flipped byte in one object and ``--repair`` plus the same command restore the store;
``invwnn train`` trains from it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from _s3 import BUCKET, flip_byte, store_content
from invwnn.cli.main import main as invwnn_cli
from trajgen import store
from trajgen.cli import main as trajgen_cli
from trajgen.collect import CollectConfig, collect
from trajgen.migrate import migrate
from trajgen.s3local import s3_server
from trajgen.verify import verify

pytestmark = pytest.mark.slow  # 60-110 s on the shared 2-core machine, mostly process starts

BIN = Path(sys.executable).parent
RUNS = dict(runs=4, steps=48, every=8, archs=("mlp", "cnn"))
FLAGS = ["--runs", "4", "--steps", "48", "--every", "8", "--archs", "mlp,cnn", "--quiet"]


def wait(condition, seconds: float, what: str, poll: float = 0.05):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """A scheduler and workers started as `dask` commands; every process is killed at the end."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.env, self.processes = folder, {**env, "OMP_NUM_THREADS": "1",
                                                  "DASK_TEMPORARY_DIRECTORY": str(folder)}, []
        self.file = folder / "scheduler.json"
        self.spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(self.file)])
        self.address = wait(lambda: self.file.is_file() and json.loads(self.file.read_text() or "{}").get("address"),
                            60, "the scheduler")

    def spawn(self, args: list[str]) -> subprocess.Popen:
        process = subprocess.Popen([str(BIN / "dask"), *args], cwd=self.folder, env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def add_worker(self) -> None:
        self.spawn(["worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--no-nanny",
                    "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(self.folder)])

    def workers(self, client) -> dict[str, int]:
        """Address -> pid of every worker the scheduler knows."""
        return client.run(os.getpid)

    def collect(self, name: str) -> list[str]:
        return [str(BIN / "trajgen"), "collect", "--scheduler", self.address, "--store", f"s3://{BUCKET}/{name}", *FLAGS]

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from distributed import Client

    folder = tmp_path_factory.mktemp("cluster")
    with s3_server(BUCKET) as env, contextlib.closing(Cluster(folder, env)) as cluster:
        cluster.add_worker()
        cluster.add_worker()
        with Client(cluster.address) as client:
            client.wait_for_workers(2, timeout=60)
        cluster.client_env = env
        yield cluster


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted collection, trained in this process straight into the bucket."""
    url = f"s3://{BUCKET}/reference.zarr"
    collect(CollectConfig(store=url, workers=0, progress=False, **RUNS))
    return store_content(url)


def test_a_worker_killed_mid_run_and_the_collection_finishes(cluster, reference):
    from distributed import Client

    url = f"s3://{BUCKET}/worker-killed.zarr"
    run = subprocess.Popen(cluster.collect("worker-killed.zarr"), env=cluster.client_env, cwd=cluster.folder,
                           stderr=subprocess.PIPE, text=True)
    with Client(cluster.address) as client:
        def writing():  # (worker pid, run) of a run now half-written by its worker
            for address, keys in client.processing().items():
                for key in keys:
                    name = str(key).removeprefix("trajgen-")
                    with contextlib.suppress(store.StoreError):
                        root = store.open_store(url)
                        if name in store.run_names(root) and not store.is_complete(root, name):
                            return cluster.workers(client)[address], name
        pid, name = wait(writing, 90, "a run being written")
        os.kill(pid, signal.SIGKILL)
    assert run.wait(timeout=120) == 0, run.stderr.read()
    assert store_content(url) == reference
    cluster.add_worker()  # two again for the next drill


def test_the_client_killed_and_the_command_rerun(cluster, reference):
    url = f"s3://{BUCKET}/client-killed.zarr"
    run = subprocess.Popen(cluster.collect("client-killed.zarr"), env=cluster.client_env, cwd=cluster.folder,
                           stderr=subprocess.DEVNULL)
    wait(lambda: _indexed(url) >= 1, 120, "a first indexed run")
    run.kill()
    run.wait()
    assert _indexed(url) < RUNS["runs"]
    rerun = subprocess.run(cluster.collect("client-killed.zarr"), env=cluster.client_env, cwd=cluster.folder,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert store_content(url) == reference


def _indexed(url: str) -> int:
    with contextlib.suppress(store.StoreError):
        return len(store.complete_runs(url, include_diverged=True))
    return 0


def test_verify_finds_a_flipped_byte_and_the_same_command_repairs_it(cluster, reference, tmp_path):
    url = f"s3://{BUCKET}/flipped.zarr"
    migrate(f"s3://{BUCKET}/reference.zarr", url)
    flip_byte("flipped.zarr/runs/run-000002/history/c/0/0")
    r = CliRunner().invoke(trajgen_cli, ["verify", url])
    assert r.exit_code == 1 and "run-000002: 1 damaged chunk(s): history/c/0/0 (checksum mismatch)" in r.output
    assert not verify(url, repair=True).ok
    assert subprocess.run(cluster.collect("flipped.zarr"), env=cluster.client_env, cwd=cluster.folder).returncode == 0
    repaired = store_content(url)
    assert repaired["index"] == reference["index"] and repaired["runs"].keys() == reference["runs"].keys()
    for name, (attrs, arrays) in reference["runs"].items():
        assert repaired["runs"][name][1] == arrays
    r = CliRunner().invoke(invwnn_cli, ["train", "--store", url, "--out", str(tmp_path / "p.pt"), "--window", "3",
                                        "--back", "1", "--steps", "5", "--batch-size", "256", "--eval-per-kind", "20",
                                        "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.pt").is_file()
