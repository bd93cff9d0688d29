import dataclasses
import json

import numpy as np
import pytest
import torch
import zarr

from trajgen import nets, store
from trajgen.collect import train_to_store
from trajgen.spec import OptimSpec, draw_run
from trajgen.train import build_model, snapshots


@pytest.fixture
def empty_store(tmp_path):
    path = str(tmp_path / "s.zarr")
    store.create_store(path)
    return path


def test_values_in_the_store_equal_the_model_weights_at_those_steps(empty_store, fmnist):
    spec = draw_run(0, 1, steps=40, every=3)  # a cnn (BatchNorm included)
    seen = {}
    torch.set_num_threads(1)
    model = build_model(spec, fmnist)
    for snap in snapshots(spec, model, fmnist):
        seen[snap.step] = nets.flat_weights(model).clone()
    name, summary = train_to_store(empty_store, spec.to_dict(), None, 1)
    run = store.open_run(empty_store, name)
    assert run.history.shape == (nets.n_params(model), spec.n_snapshots) == (summary["n_coords"], 14)
    assert list(run.step) == sorted(seen) == list(range(0, 40, 3))
    history = run.history[:]
    for j, step in enumerate(run.step):
        np.testing.assert_array_equal(history[:, j], seen[int(step)].numpy())
    layers = run.layers
    assert [nets.KINDS[k] for k in run.kind[[l.offset for l in layers]]] == [l.kind for l in layers]
    last = layers[-1]
    assert run.layer[last.offset] == len(layers) - 1 and run.pos[last.offset + 2] == 2


def test_time_chunks_are_flushed_across_boundaries(empty_store, fmnist):
    spec = draw_run(0, 0, steps=150, every=1)  # 151 snapshots: a full chunk of 76 and a partial one
    name, _ = train_to_store(empty_store, spec.to_dict(), None, 1)
    run = store.open_run(empty_store, name)
    history = run.history[:]
    assert history.shape[1] == 151 and np.isfinite(history).all()
    assert not np.array_equal(history[:, 75], history[:, 76])
    assert run.history.chunks[1] == store.time_chunk_for(151) == 76


def test_store_reopens_with_plain_zarr(empty_store, fmnist):
    spec = draw_run(0, 2, steps=8, every=4)
    train_to_store(empty_store, spec.to_dict(), None, 1)
    store.add_to_index(store.open_store(empty_store, "a"),
                       {spec.name: store.run_summary(store.open_store(empty_store)["runs"][spec.name])})
    root = zarr.open_group(empty_store, mode="r")
    group = root["runs"][spec.name]
    model = build_model(spec, fmnist)
    assert group["history"].shape == (nets.n_params(model), 3)
    assert group["history"].dtype == np.float32
    assert json.loads(json.dumps(dict(group.attrs)))["spec"]["index"] == 2
    assert root.attrs["schema_version"] == store.SCHEMA_VERSION
    page = root["index"]["p000000"].attrs["entries"]
    assert root["index"].attrs["count"] == 1 and [e["run"] for e in page] == [spec.name]
    codecs = [type(c).__name__ for c in group["history"].metadata.codecs]
    assert codecs == ["PCodec", "Crc32cCodec"]  # lossless, then every chunk checksummed
    assert all(type(group[k].metadata.codecs[-1]).__name__ == "Crc32cCodec" for k in store.ARRAY_DTYPES)


def test_incomplete_runs_are_invisible_to_readers(empty_store, fmnist):
    spec = draw_run(0, 0, steps=8, every=4)
    writer = store.RunWriter(empty_store, spec, nets.layer_table(build_model(spec, fmnist)))
    writer.append(0, np.zeros(writer.history.shape[0], np.float32), 1.0, 0.1)
    root = store.open_store(empty_store, "a")
    with pytest.raises(store.StoreError, match="run-000000 is not complete"):  # the index refuses it
        store.add_to_index(root, {spec.name: {"arch": "mlp", "optimizer": "sgd", "n_coords": writer.history.shape[0],
                                              "n_snapshots": 3, "final_test_acc": 0.5, "diverged": False}})
    assert store.run_names(root) == [spec.name]
    assert not store.is_complete(root, spec.name)
    assert store.complete_runs(empty_store) == []
    with pytest.raises(store.StoreError, match="incomplete"):
        store.open_run(empty_store, spec.name)


def test_diverged_run_is_recorded_as_such(empty_store, fmnist):
    spec = draw_run(0, 0, steps=24, every=4)
    spec = dataclasses.replace(spec, optim=OptimSpec("sgd", 1e30, 0.0, "constant"))
    name, summary = train_to_store(empty_store, spec.to_dict(), None, 1)
    assert summary["diverged"] and summary["n_snapshots"] < spec.n_snapshots
    root = store.open_store(empty_store, "a")
    store.add_to_index(root, {name: summary})
    assert store.complete_runs(empty_store) == []
    assert store.complete_runs(empty_store, include_diverged=True) == [name]
    assert np.isfinite(store.open_run(empty_store, name).history[:]).all()


def test_other_schema_versions_and_foreign_groups_are_refused(tmp_path):
    path = tmp_path / "old.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"kind": store.STORE_KIND, "schema_version": 0})
    with pytest.raises(store.StoreError, match="schema version 0"):
        store.open_store(path)
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    foreign.attrs["x"] = 1
    with pytest.raises(store.StoreError, match="not a trajgen store"):
        store.create_store(tmp_path / "foreign.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("mine")
    with pytest.raises(store.StoreError, match="not empty"):
        store.create_store(tmp_path / "junk")


def test_unwritable_locations_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(store.StoreError, match="not a directory"):
        store.create_store(tmp_path / "file" / "s.zarr")
    with pytest.raises(store.StoreError, match="cannot write"):
        store.create_store("/proc/traj.zarr")
