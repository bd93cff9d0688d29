"""Sampled runs (``collect --coords N``): the history holds exactly the model's weights at the
recorded coordinates and steps, and every reader (open_run, info, verify, the window stream)
reads the run unchanged."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trajgen import data as datasets
from trajgen import info, nets, store, verify
from trajgen.cli import main
from trajgen.collect import CollectConfig, collect
from trajgen.train import build_model, snapshots

CONFIG = dict(archs=("resnet18", "convnext"), runs=2, steps=6, every=2, dataset="synthetic", coords=700,
              width_mult=0.0625, workers=0, progress=False)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sampled") / "s.zarr")
    collect(CollectConfig(store=path, **CONFIG))
    return path


def test_history_equals_the_weights_at_the_sampled_coordinates_and_steps(sampled):
    data = datasets.load("synthetic")
    for name in store.complete_runs(sampled):
        run = store.open_run(sampled, name)
        table = nets.layer_table(build_model(run.spec, data))
        assert run.coords is not None and len(run.coords) == run.spec.coords == run.history.shape[0]
        assert np.array_equal(run.coords, nets.sample_coords(table, run.spec.coords, run.spec.seed))
        expected = store.coordinate_arrays(table, run.coords)
        assert all(np.array_equal(getattr(run, k), v) for k, v in expected.items())
        # retrain the same spec, keeping every weight, and compare at the stored steps (one torch
        # thread, as collect trains: another thread count sums in another order)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            snaps = list(snapshots(run.spec, build_model(run.spec, data), data))
        finally:
            torch.set_num_threads(threads)
        assert [s.step for s in snaps] == run.step.tolist() == [0, 2, 4, 6]
        full = np.stack([s.weights for s in snaps], 1)  # (n_params, n_snapshots)
        assert full.shape[0] == sum(layer.numel for layer in table) > run.history.shape[0]
        np.testing.assert_array_equal(run.history[:], full[run.coords])
        # the layer/pos arrays locate each sampled row inside its parameter tensor
        params = dict(build_model(run.spec, data).named_parameters())
        row = 5
        layer = table[int(run.layer[row])]
        assert params[layer.name].detach().reshape(-1)[int(run.pos[row])].item() == run.history[row, 0]


def test_readers_keep_working_on_sampled_runs(sampled):
    d = info.describe(sampled)
    assert d["runs"] == 2 and d["coordinates"] == 1400 and d["sampled_runs"] == 2
    assert "2 runs record a sample" in info.format_description(d)
    report = verify.verify(sampled)
    assert report.ok and report.runs_checked == 2, report.problems
    from invwnn.train.windows import WindowStream

    batch = next(iter(WindowStream(sampled, store.complete_runs(sampled), k=2, u=1, batch_size=64, buffer=256)))
    assert batch["w"].shape == (64, 2) and np.isfinite(batch["w"].numpy()).all()
    result = CliRunner().invoke(main, ["verify", sampled])
    assert result.exit_code == 0, result.output


def test_verify_finds_coordinates_that_do_not_match(sampled, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "bad.zarr"
    shutil.copytree(sampled, copy)
    name = store.complete_runs(str(copy))[0]
    group = zarr.open_group(str(copy))["runs"][name]
    coords = group["coords"][:]
    coords[[3, 4]] = coords[[4, 3]]
    group["coords"][:] = coords
    report = verify.verify(str(copy))
    assert any(f"{name}: coords are not strictly increasing" in p for p in report.problems)


def test_writer_refuses_bad_coordinates(tmp_path):
    from trajgen.spec import draw_run

    root = store.create_store(tmp_path / "w.zarr")
    run = draw_run(0, 0, ("resnet18",), steps=2, every=1, coords=3, width_mult=0.0625)
    table = nets.layer_table(build_model(run, datasets.load("synthetic")))
    with pytest.raises(store.StoreError, match="outside the model"):
        store.create_run_group(root["runs"], run.name, run, table, 3, coords=np.array([0, 1, 10**9]))
