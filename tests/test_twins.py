"""Counterfactual twins (trajgen twins): the twin never sees S, its stored weights are a training
without S from the parent's start, and the twin store verifies, resumes and reads like any other."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from trajgen import data as datasets
from trajgen import episode_spec, episodes, store, twins, verify
from trajgen.nets import flat_weights, layer_table
from trajgen.train import batches, build_model, snapshots

PARENT_STEPS = 12


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setattr(episode_spec, "TWIN_STEPS", 6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(index: int) -> episodes.EpisodeSpec:
    """Index 0, 1, 2 follow the rules random, class, mislabelled (one episode per parent)."""
    return episodes.draw_episode(0, index, 1, "synthetic", parent_steps=PARENT_STEPS, twin=True)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_twins_batches_are_the_parents_minus_s(index):
    s = spec(index)
    data = datasets.load_cached("synthetic", None)
    subset, _ = episodes.subset_indices(s, data)
    pool, _, _ = episode_spec.parent_data(s.parent, s.parent_pool, s.parent_noise, data)
    parent = batches(len(pool), s.parent.batch_size, s.parent.seed)
    twin = twins.twin_order(s, data)
    dropped, seen_s = 0, 0
    for _ in range(3 * PARENT_STEPS):
        full = pool[next(parent).numpy()]
        kept = full[~np.isin(full, subset)]
        seen_s += np.isin(full, subset).sum()
        if len(kept) == 0:
            dropped += 1
            continue
        got = twins.training_indices(s, data, next(twin))
        assert not np.isin(got, subset).any(), "the twin saw an example of S"
        np.testing.assert_array_equal(got, kept)  # same order, S removed
    assert seen_s > 0, "the parent's batches must hold S, or the test shows nothing"
    assert s.name == f"twin-{index:06d}" and s.steps == 6


def test_stored_counterfactual_is_a_training_without_s(tmp_path):
    """Replay: the stored twin weights equal trajgen's training loop run on the pool without S (same
    start, same order minus S), they differ from the original's, and the episode starts at the
    original's weights."""
    path = str(tmp_path / "t.zarr")
    store.create_store(path)
    s = spec(0)
    name, summary = episodes.write_episode(path, s)
    root = store.open_store(path)
    g = root["runs"][name]
    assert g.attrs["kind"] == "twin" and summary["n_snapshots"] == s.steps + 1
    stored = twins.read_counterfactual(root, name)[:]

    data = datasets.load_cached("synthetic", None)
    subset, _ = episodes.subset_indices(s, data)
    pool, labels, _ = episode_spec.parent_data(s.parent, s.parent_pool, s.parent_noise, data)
    keep = ~np.isin(pool, subset)
    # a loop that never sees S: drop S from each of the parent's batches
    pool_data = dataclasses.replace(data, x_train=data.x_train[pool], y_train=labels[pool])
    model = build_model(s.parent, pool_data)
    order = (idx[torch.from_numpy(keep)[idx]] for idx in batches(len(pool), s.parent.batch_size, s.parent.seed))
    for _ in snapshots(s.parent, model, pool_data, (i for i in order if len(i))):
        pass
    np.testing.assert_array_equal(stored, flat_weights(model, layer_table(model)).numpy())

    original = flat_weights(episodes.parent_model(s), layer_table(model)).numpy()
    np.testing.assert_array_equal(g["history"][:, 0], original)
    assert not np.array_equal(stored, original)
    record = g.attrs["twin"]
    assert record["distance"] == pytest.approx(float(np.linalg.norm(stored - original)), rel=1e-5)
    assert 0 <= record["twin"]["forget_acc"] <= 1 and record["dropped_batches"] >= 0


def test_twin_collection_resumes_verifies_and_flags_a_missing_counterfactual(tmp_path):
    path = tmp_path / "t.zarr"
    config = episodes.EpisodeConfig(store=str(path), runs=2, per_parent=2, parent_steps=PARENT_STEPS,
                                    dataset="synthetic", workers=0, twins=True, progress=False)
    first = episodes.collect_episodes(config)
    assert first["trained"] == 2
    again = episodes.collect_episodes(config)
    assert again["trained"] == 0 and again["skipped"] == 2
    # a kill while twin-000001 was being written: its group is left incomplete; the rerun rewrites
    # it, bit for bit (runs are deterministic)
    root = store.open_store(path, mode="a")
    before = {k: a[:] for k, a in root["runs"]["twin-000001"].arrays()}
    root["runs"]["twin-000001"].attrs["complete"] = False
    resumed = episodes.collect_episodes(config)
    assert resumed["trained"] == 1
    after = {k: a[:] for k, a in store.open_store(path)["runs"]["twin-000001"].arrays()}
    assert before.keys() == after.keys()
    for key in before:  # NaN equals NaN here (step 0 has no loss)
        np.testing.assert_array_equal(before[key], after[key])
    assert verify.verify(path).ok
    root = store.open_store(path, mode="a")
    del root["runs"]["twin-000001"]["counterfactual"]
    problems = verify.verify(path).problems
    assert any("twin-000001" in p and "counterfactual" in p for p in problems)


@pytest.mark.slow  # a twin collection and a predictor, about 8 s
def test_counterfactual_windows_and_a_predictor_trained_on_them(tmp_path):
    """Windows of a twin store pair the fine-tuning window with the twin's weight of the same
    coordinate, start no later than max_start, and `invwnn train --target counterfactual` records
    its target in the checkpoint; a store of plain runs is refused for that target."""
    from invwnn.train.fit import TrainConfig, train
    from invwnn.rewind.predictor import read_checkpoint
    from invwnn.train.windows import WindowError, check_windows, cut_windows

    path = str(tmp_path / "t.zarr")
    config = episodes.EpisodeConfig(store=path, runs=4, per_parent=2, parent_steps=PARENT_STEPS,
                                    dataset="synthetic", workers=0, twins=True, progress=False)
    episodes.collect_episodes(config)
    root = store.open_store(path)
    h = root["runs"]["twin-000000"]["history"][:]
    cf = twins.read_counterfactual(root, "twin-000000")[:]
    codes = root["runs"]["twin-000000"]["kind"][:]
    w, target, _, rows, starts = cut_windows(h, codes, 3, 3, 2, np.random.default_rng(0), return_index=True,
                                             counterfactual=cf, max_start=1)
    np.testing.assert_array_equal(target, cf[rows])
    np.testing.assert_array_equal(w[:, 0], h[rows, starts])
    assert starts.min() == 0 and starts.max() == 1  # a counterfactual target needs no snapshot before

    out = tmp_path / "p.pt"
    train(TrainConfig(store=path, out=str(out), k=3, u=3, steps=3, batch_size=256, eval_per_kind=20, eval_every=3,
                      val_fraction=0.5, fit_runs=1, workers=0, target="counterfactual", max_start=2), progress=False)
    ckpt = read_checkpoint(out)
    assert ckpt["model_config"].target == "counterfactual" and ckpt["provenance"]["data_kind"] == "twins"
    assert set(ckpt["provenance"]["val_runs"]) in ({"twin-000000", "twin-000001"}, {"twin-000002", "twin-000003"})

    plain = str(tmp_path / "e.zarr")
    episodes.collect_episodes(dataclasses.replace(config, store=plain, twins=False, runs=1))
    with pytest.raises(WindowError, match="no counterfactual weights"):
        check_windows(plain, ["episode-000000"], 3, 3, "counterfactual")


def test_a_context_predictor_trains_records_its_context_and_the_applier_supplies_it(tmp_path):
    """--context step,layer: the stream's context columns are the run's optimizer/lr and the layer
    statistics of windows sharing a start; the checkpoint records the context; the learned rewinder
    computes it from the loop's optimizer and the coordinates' layers, and refuses to run without."""
    from invwnn.train.fit import TrainConfig, train
    from invwnn.rewind.predictor import load_learned
    from invwnn.errors import InputError
    from invwnn.rewind.predictor import read_checkpoint
    from invwnn.rewind.features import layer_context, step_context
    from invwnn.train.windows import WindowStream

    path = str(tmp_path / "t.zarr")
    episodes.collect_episodes(episodes.EpisodeConfig(store=path, runs=4, per_parent=2, parent_steps=PARENT_STEPS,
                                                     dataset="synthetic", workers=0, twins=True, progress=False))
    runs = ["twin-000000", "twin-000001"]
    stream = WindowStream(path, runs, 3, 3, 512, per_coord=1, buffer=1 << 12, epochs=1, target="counterfactual",
                          context=("step", "layer"))
    batch = next(iter(stream))
    assert batch["context"].shape == (512, 4)
    optimizers = {store.open_store(path)["runs"][r].attrs["spec"]["optim"]["name"] for r in runs}
    steps = {tuple(row.tolist()) for row in batch["context"][:, :2]}
    assert len(steps) <= len(runs) and all(a == float(o in ("adam", "adamw", "rmsprop"))
                                           for (a, _), o in zip(sorted(steps), sorted(optimizers)) if len(steps) == len(runs))
    assert batch["context"][:, 3].abs().max() <= 1.0 + 1e-6  # a layer's mean net displacement over span

    # layer_context by hand: two layers, one moving twice as far as the other
    w = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -4.0], [0.0, -4.0]])
    ctx = layer_context(w, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(ctx[:, 0], torch.log(torch.tensor([1.0, 2.0, 1.0, 1.0])))  # over the lower median
    assert torch.allclose(ctx[:, 1], torch.tensor([1.0, 1.0, -1.0, -1.0]))
    assert torch.allclose(step_context("adam", 1e-3), torch.tensor([1.0, 0.0]))

    out = tmp_path / "c.pt"
    train(TrainConfig(store=path, out=str(out), k=3, u=3, steps=3, batch_size=256, eval_per_kind=20, eval_every=3,
                      val_fraction=0.5, fit_runs=1, workers=0, target="counterfactual", context=("step", "layer")),
          progress=False)
    assert read_checkpoint(out)["model_config"].context == ("step", "layer")
    with pytest.raises(InputError, match="optimizer and learning rate"):
        load_learned(str(out))
    rewinder = load_learned(str(out), step=("adam", 1e-3))
    windows = torch.randn(10, 3).cumsum(1)
    got = rewinder.rewind(windows, torch.zeros(10, dtype=torch.long), torch.tensor([0] * 5 + [1] * 5))
    assert got.shape == (10,) and torch.isfinite(got).all()
    with pytest.raises(InputError, match="layer"):
        rewinder.rewind(windows, torch.zeros(10, dtype=torch.long))
