"""Stores on object storage, in one process: an S3-compatible server on 127.0.0.1 (moto). The same
collection into s3:// and into a folder gives the same store; info, verify, migrate, resume and the
loader work through the URL; an unreachable endpoint, a missing bucket or credentials in the URL are
one line, exit code 2, and nothing is written. Across processes and kills: tests/test_cluster.py."""
import boto3
import pytest
import s3fs
from click.testing import CliRunner
from torch.utils.data import DataLoader

from _s3 import BUCKET, store_content
from trajgen import store
from trajgen.cli import main
from trajgen.loader import Runs, Windows
from trajgen.s3local import free_port, s3_server

FLAGS = ["--runs", "2", "--steps", "8", "--every", "4", "--archs", "mlp,cnn", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as env:
        yield env


def objects(prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.slow  # two collections through the S3 server, 5-15 s
def test_a_collection_into_s3_is_the_one_into_a_folder(s3, tmp_path):
    url, local = f"s3://{BUCKET}/same.zarr", str(tmp_path / "same.zarr")
    runner = CliRunner()
    for where in (url, local):
        r = runner.invoke(main, ["collect", "--store", where, *FLAGS])
        assert r.exit_code == 0, r.output
    assert store_content(url) == store_content(local)
    r = runner.invoke(main, ["collect", "--store", url, *FLAGS])
    assert "skipped 2 already complete" in r.output
    r = runner.invoke(main, ["info", url])
    assert r.exit_code == 0 and "2 complete" in r.output and url in r.output
    r = runner.invoke(main, ["verify", url])
    assert r.exit_code == 0 and "2 complete runs checked, 0 problems" in r.output
    copy = f"s3://{BUCKET}/copy.zarr"
    r = runner.invoke(main, ["migrate", local, copy])
    assert r.exit_code == 0 and "copied 2 runs" in r.output
    assert store_content(copy)["index"] == store_content(local)["index"]


@pytest.mark.slow  # two loader worker processes, 4-12 s
def test_the_loader_reads_s3_with_two_loader_workers(s3):
    url = f"s3://{BUCKET}/loader.zarr"
    assert CliRunner().invoke(main, ["collect", "--store", url, *FLAGS]).exit_code == 0
    windows = Windows(url, length=2)
    seen = [(w["run"], w["c0"], w["t0"]) for w in DataLoader(windows, batch_size=None, num_workers=2)]
    assert len(seen) == len(set(seen)) == 2 * len(windows.blocks)  # 3 snapshots: starts 0 and 1
    run = store.open_run(url, "run-000001")
    first = next(w for w in Windows(url, length=2, runs=["run-000001"]))
    assert (first["weights"].numpy() == run.history[: first["weights"].shape[0], :2]).all()
    loaded = {r["name"]: r for r in DataLoader(Runs(url), batch_size=None, num_workers=2)}
    assert sorted(loaded) == ["run-000000", "run-000001"] and (loaded["run-000001"]["history"].numpy() == run.history[:]).all()


@pytest.mark.parametrize("case", ["missing bucket", "unreachable", "credentials in the URL", "unknown scheme"])
def test_a_store_that_cannot_be_reached_is_one_line_and_nothing_is_written(s3, tmp_path, monkeypatch, case):
    url = f"s3://{BUCKET}/never.zarr"
    if case == "missing bucket":
        url, needle = "s3://no-such-bucket/t.zarr", "bucket no-such-bucket does not exist"
    elif case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        needle = "cannot reach"
    elif case == "credentials in the URL":
        url, needle = f"s3://key:secret@{BUCKET}/t.zarr", "credentials do not belong"
    else:
        url, needle = "nosuch://x/t.zarr", "not supported"
    monkeypatch.chdir(tmp_path)
    s3fs.S3FileSystem.clear_instance_cache()  # the endpoint is read when a client is made
    try:
        for command in (["collect", "--store", url, *FLAGS], ["info", url], ["verify", url]):
            r = CliRunner().invoke(main, command)
            lines = r.output.strip().splitlines()
            assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], (command, r.output)
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
    assert not list(tmp_path.iterdir()) and not objects("never.zarr")
    assert BUCKET in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
