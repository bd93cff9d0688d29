"""Schema version 2: checksummed chunks found damaged by verify, repaired by a rerun of collect,
met by readers as one-line StoreErrors; the append-only index; version-1 stores read and migrated."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from zarr.codecs import BloscCodec

from invwnn.train.windows import WindowStream
from trajgen import nets, store
from trajgen.cli import main
from trajgen.collect import CollectConfig, collect
from trajgen.spec import draw_run
from trajgen.train import build_model
from trajgen.verify import verify

CONFIG = dict(runs=2, steps=8, every=4, archs=("mlp",), workers=0, progress=False)
RUN = "run-000001"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(path: Path) -> dict[str, str]:
    """Relative file path -> sha256 of its bytes, for every file under ``path``."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v2") / "s.zarr"
    collect(CollectConfig(store=str(path), **CONFIG))
    return path


@pytest.fixture
def damaged(clean, tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(clean, path)
    return path


def chunk_file(path: Path, key: str = "history") -> Path:
    """The first chunk's file of array ``key`` of run-000001."""
    return path / "runs" / RUN / key / "c" / "0" / ("0" if key == "history" else "")


def flip_bit(f: Path, where: float) -> None:
    data = bytearray(f.read_bytes())
    data[min(len(data) - 1, int(where * len(data)))] ^= 0x04
    f.write_bytes(bytes(data))


DAMAGE = {"bit at the start": lambda f: flip_bit(f, 0.0), "bit in the middle": lambda f: flip_bit(f, 0.5),
          "bit in the checksum": lambda f: flip_bit(f, 1.0), "garbage": lambda f: f.write_bytes(b"garbage!")}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_chunk_is_one_line_naming_its_run(damaged, damage):
    DAMAGE[damage](chunk_file(damaged))
    result = invoke("verify", damaged)
    assert result.exit_code == 1, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: {RUN}: 1 damaged chunk(s): history/c/0/0 (checksum mismatch)"]
    assert "Traceback" not in result.output


def test_every_array_is_checksummed(damaged):
    for key in ("kind", "step"):
        flip_bit(chunk_file(damaged, key), 0.5)
    assert verify(damaged).problems == [f"{RUN}: 2 damaged chunk(s): kind/c/0 (checksum mismatch), "
                                        "step/c/0 (checksum mismatch)"]


def test_readers_meet_a_damaged_chunk_as_one_line_naming_the_run(damaged):
    flip_bit(chunk_file(damaged), 0.5)
    run = store.open_run(damaged, RUN)
    with pytest.raises(store.StoreError, match=f"run {RUN}: history cannot be read \\(checksum mismatch\\)"):
        run.history[:]
    stream = WindowStream(str(damaged), [RUN], k=2, u=1, batch_size=4096, per_coord=1, buffer=4096, epochs=1)
    with pytest.raises(store.StoreError, match=f"run {RUN}: history cannot be read"):
        list(stream)  # invwnn train's window stream
    flip_bit(chunk_file(damaged, "kind"), 0.5)
    with pytest.raises(store.StoreError, match=f"run {RUN}: kind cannot be read"):
        store.open_run(damaged, RUN)


def test_repair_then_the_same_collect_restores_the_store_byte_for_byte(clean, damaged):
    flip_bit(chunk_file(damaged), 0.5)
    repaired = invoke("verify", damaged, "--repair")
    assert repaired.exit_code == 1 and f"repaired: marked {RUN} incomplete" in repaired.output
    assert f"repaired: dropped {RUN} from the index" in repaired.output
    assert store.complete_runs(damaged) == ["run-000000"]  # readers no longer see it
    assert tree(damaged / "runs" / "run-000000") == tree(clean / "runs" / "run-000000")  # untouched
    result = invoke("collect", "--store", damaged, "--runs", 2, "--steps", 8, "--every", 4, "--archs", "mlp",
                    "--workers", 0, "--quiet")
    assert result.exit_code == 0 and "trained 1 runs, skipped 1" in result.output
    assert tree(damaged / "runs") == tree(clean / "runs")  # every run file, byte for byte
    assert store.index(store.open_store(damaged)) == store.index(store.open_store(clean))
    assert verify(damaged).ok


def test_the_index_appends_a_bounded_page_and_replays_drops(tmp_path, clean, damaged):
    root = store.open_store(damaged, "a")
    before = store.index(root)
    store.drop_from_index(root, [RUN])
    assert list(store.index(root)) == ["run-000000"]
    store.add_to_index(root, {RUN: before[RUN]})
    assert store.index(root) == before
    group = root["index"]
    assert group.attrs["count"] == 4 and len(group["p000000"].attrs["entries"]) == 4
    # pages beyond the count (written, not committed by a killed writer) are not read
    group["p000000"].attrs["entries"] = group["p000000"].attrs["entries"] + [{"run": "run-000000", "dropped": True}]
    assert store.index(root) == before


@pytest.mark.parametrize("steps", [20, 150])  # one chunk holds the whole run / three time chunks
def test_the_writer_stores_every_snapshot_exactly(tmp_path, fmnist, steps):
    spec = draw_run(0, 2, ("vit",), steps=steps, every=1)  # a vit: fewer coordinates than one chunk
    path = str(tmp_path / "w.zarr")
    store.create_store(path)
    writer = store.RunWriter(path, spec, nets.layer_table(build_model(spec, fmnist)))
    rng = np.random.default_rng(0)
    expected = rng.normal(0, 1, (writer.history.shape[0], spec.n_snapshots)).astype(np.float32)
    for j in range(spec.n_snapshots):
        writer.append(j, expected[:, j], 1.0, 0.5)
    writer.close(0.5)
    np.testing.assert_array_equal(store.open_run(path, spec.name).history[:], expected)


def make_version_1(v2: Path, v1: Path) -> None:
    """Rewrite a version-2 store as version 1 wrote it: Blosc without checksums, the whole index
    in one root attribute."""
    src = zarr.open_group(str(v2), mode="r")
    dst = zarr.open_group(str(v1), mode="w", attributes={
        "kind": store.STORE_KIND, "schema_version": 1, "index": {
            n: {k: v for k, v in s.items() if k != "bytes_stored"} for n, s in store.index(src).items()}})
    runs = dst.create_group("runs")
    for name, group in src["runs"].groups():
        g = runs.create_group(name, attributes=dict(group.attrs))
        for key, a in group.arrays():
            g.create_array(key, data=a[:], chunks=a.chunks,
                           compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")])


def test_version_1_stores_are_read_refused_for_writing_and_migrated(clean, tmp_path):
    old, new = tmp_path / "v1.zarr", tmp_path / "v2.zarr"
    make_version_1(clean, old)
    assert store.complete_runs(old) == ["run-000000", "run-000001"]
    np.testing.assert_array_equal(store.open_run(old, RUN).history[:], store.open_run(clean, RUN).history[:])
    assert verify(old).ok
    info = invoke("info", old)
    assert info.exit_code == 0 and "(schema 1)" in info.output and "2 complete" in info.output
    refused = invoke("collect", "--store", old, "--runs", 3, "--archs", "mlp", "--workers", 0)
    assert refused.exit_code == 2 and "trajgen migrate" in refused.output and refused.output.count("\n") == 1
    migrated = invoke("migrate", old, new)
    assert migrated.exit_code == 0 and "copied 2 runs" in migrated.output
    assert tree(new / "runs") == tree(clean / "runs")  # the same bytes a version-2 collection writes
    assert verify(new).ok and store.index(store.open_store(new)) == store.index(store.open_store(clean))
    again = invoke("migrate", old, new)
    assert again.exit_code == 0 and "copied 0 runs" in again.output and "skipped 2" in again.output


def test_a_garbage_chunk_in_a_version_1_store_is_one_line_too(clean, tmp_path):
    old = tmp_path / "v1.zarr"
    make_version_1(clean, old)
    chunk_file(old).write_bytes(b"\x02\x01garbage")
    problems = verify(old).problems
    assert len(problems) == 1 and problems[0].startswith(f"{RUN}: 1 damaged chunk(s): history/c/0/0 (")
    with pytest.raises(store.StoreError, match=f"run {RUN}: history cannot be read"):
        store.open_run(old, RUN).history[:]
