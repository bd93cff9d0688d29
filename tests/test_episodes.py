"""Fine-tuning episodes (trajgen episodes) and the spacing they record through to the applier."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trajgen import data as datasets
from trajgen import episode_spec, episodes, store
from trajgen.nets import flat_weights, layer_table
from invwnn.rewind import make_rewinder
from invwnn.unlearn.apply import make_config
from invwnn.train.heldout import split_runs
from invwnn.errors import InputError
from invwnn.rewind.predictor import ModelConfig, Predictor, save_checkpoint

PARENT_STEPS = 8  # synthetic data: a parent only needs to exist, not to be good


@pytest.fixture(autouse=True)
def short_episodes(monkeypatch):
    """Episodes of a few steps on one torch thread, so each test takes seconds."""
    monkeypatch.setattr(episode_spec, "EPISODE_STEPS", (10, 12))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(path, runs: int, per_parent: int = 2) -> episodes.EpisodeConfig:
    return episodes.EpisodeConfig(store=str(path), runs=runs, per_parent=per_parent, parent_steps=PARENT_STEPS,
                                  dataset="synthetic", workers=0, progress=False)


def spec(index: int, per_parent: int = 1) -> episodes.EpisodeSpec:
    """With one episode per parent, index 0, 1, 2 follow the rules random, class, mislabelled."""
    return episodes.draw_episode(0, index, per_parent, "synthetic", parent_steps=PARENT_STEPS)


def snapshot_of(path) -> dict:
    """Everything a store holds that a rerun must reproduce: index, each episode's attributes
    (library versions aside) and arrays."""
    root = store.open_store(path)
    out = {"index": json.dumps(store.index(root), sort_keys=True)}
    for name, group in root["runs"].groups():
        attrs = {k: v for k, v in group.attrs.items() if k != "versions"}
        out[name] = (json.dumps(attrs, sort_keys=True), {k: a[:] for k, a in group.arrays()})
    return out


def test_spec_is_a_pure_json_roundtrip():
    s = spec(4, per_parent=2)
    assert spec(4, per_parent=2) == s
    assert episodes.EpisodeSpec.from_dict(json.loads(s.to_json())) == s
    assert s.every == 1 and s.parent_index == 2 and s.name == "episode-000004"
    assert s.run_spec().name == s.name and s.run_spec().every == 1


def test_stored_weights_equal_the_models_at_every_step(tmp_path):
    """Replay the fine-tuning with a plain Adam/SGD loop and compare each step with the store."""
    root = store.create_store(tmp_path / "e.zarr")
    s = spec(0)
    name, summary = episodes.write_episode(str(tmp_path / "e.zarr"), s)
    g = root["runs"][name]
    assert g.attrs["kind"] == "episode" and g.attrs["episode"]["rule"] == "random"
    history = g["history"][:]
    assert history.shape[1] == s.steps + 1 == summary["n_snapshots"]
    np.testing.assert_array_equal(g["step"][:], np.arange(s.steps + 1))

    data = datasets.load_cached("synthetic", None)
    model = episodes.parent_model(s)
    table = layer_table(model)
    subset, labels = episodes.subset_indices(s, data)
    label_of = dict(zip(subset.tolist(), labels.tolist()))
    norm_ids = {id(p) for m in model.modules() if isinstance(m, episodes.NORM_TYPES) for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in norm_ids]
    model.train()
    for m in model.modules():
        if isinstance(m, episodes.NORM_TYPES):
            m.eval()
    opt = torch.optim.Adam(params, lr=s.lr) if s.optimizer == "adam" else torch.optim.SGD(params, lr=s.lr)
    order = episodes.episode_batches(s, subset)
    np.testing.assert_array_equal(history[:, 0], flat_weights(model, table).numpy())
    for step in range(1, s.steps + 1):
        idx = next(order)
        x = data.x_train[torch.from_numpy(idx)].float() / 255
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([label_of[i] for i in idx.tolist()]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        np.testing.assert_allclose(history[:, step], flat_weights(model, table).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_finetuning_batches_hold_only_the_subset(index, monkeypatch):
    s = spec(index)
    data = datasets.load_cached("synthetic", None)
    subset, labels = episodes.subset_indices(s, data)
    pool, parent_labels, noisy = episode_spec.parent_data(s.parent, s.parent_pool, s.parent_noise, data)
    assert set(subset) <= set(pool)
    if s.rule == "class":
        assert (data.y_train[subset] == s.target_class).all()
    if s.rule == "mislabelled":
        assert set(subset) <= set(noisy) and (labels != data.y_train[subset]).all()
        assert (parent_labels[subset] == labels).all()  # the parent learned these wrong labels
    seen = []

    def recording(spec_, subset_):
        for idx in real(spec_, subset_):
            seen.append(idx)
            yield idx

    real = episodes.episode_batches
    monkeypatch.setattr(episodes, "episode_batches", recording)
    snaps = list(episodes.finetune(s, episodes.parent_model(s), data))
    assert len(snaps) == s.steps + 1 and len(seen) == s.steps
    assert set(np.concatenate(seen)) <= set(subset.tolist())


def test_rerun_after_a_kill_gives_the_same_store(tmp_path):
    whole = tmp_path / "whole.zarr"
    episodes.collect_episodes(config(whole, 3))
    killed = tmp_path / "killed.zarr"
    episodes.collect_episodes(config(killed, 2))
    root = store.open_store(killed, mode="a")
    store.set_index(root, {k: v for k, v in store.index(root).items() if k != "episode-000001"})  # killed before indexing
    third = spec(2, per_parent=2)
    writer = store.RunWriter(str(killed), third.run_spec(), layer_table(episodes.parent_model(third)))
    writer.append(0, np.zeros(writer.history.shape[0], np.float32), 0.0, 0.0)  # killed while writing
    result = episodes.collect_episodes(config(killed, 3))
    assert (result["trained"], result["skipped"]) == (1, 2)
    a, b = snapshot_of(whole), snapshot_of(killed)
    assert a.keys() == b.keys() and a["index"] == b["index"]
    for name in a.keys() - {"index"}:
        assert a[name][0] == b[name][0]
        for key, values in a[name][1].items():
            np.testing.assert_array_equal(values, b[name][1][key], err_msg=f"{name}/{key}")
    with pytest.raises(episodes.SpecError, match="different spec"):
        episodes.collect_episodes(config(killed, 3, per_parent=3))
    # a store written before RunSpec had `coords` (its default, 0, is what it meant) still resumes
    group = store.open_store(whole, mode="a")["runs"]["episode-000000"]
    old = dict(group.attrs["episode"])
    old["parent"] = {k: v for k, v in old["parent"].items() if k != "coords"}
    group.attrs["episode"] = old
    assert episodes.collect_episodes(config(whole, 3))["skipped"] == 3


def test_episodes_are_held_out_with_their_parent(tmp_path):
    path = tmp_path / "e.zarr"
    episodes.collect_episodes(config(path, 6))
    runs = store.complete_runs(path)
    train, val = split_runs(str(path), runs, 0.3, (), 0)
    parent = {r: store.open_store(path)["runs"][r].attrs["episode"]["parent_index"] for r in runs}
    assert train and val and not {parent[r] for r in train} & {parent[r] for r in val}


def test_applier_refuses_a_predictor_of_another_spacing(tmp_path):
    model = Predictor(ModelConfig(k=5, u=3))
    paths = {}
    for name, provenance in (("four", {"snapshot_spacing": 4}), ("old", {})):
        paths[name] = str(tmp_path / f"{name}.pt")
        save_checkpoint(paths[name], model, {}, {}, {"val_runs": [], **provenance})
    every_step = make_config("invwnn+", {"snapshots": 5, "every": 1})
    with pytest.raises(InputError) as err:
        make_rewinder("learned", checkpoint=paths["four"], config=every_step)
    assert "\n" not in str(err.value) and "4 step(s) apart" in str(err.value) and "--every" in str(err.value)
    every_four = make_config("invwnn+", {"snapshots": 5, "every": 4})
    assert make_rewinder("learned", checkpoint=paths["four"], config=every_four).k == 5
    assert make_rewinder("learned", checkpoint=paths["old"], config=every_step).k == 5  # unknown spacing: accepted


def test_a_predictor_trained_on_episodes_records_them(tmp_path):
    """invwnn train on an episode store: the checkpoint records kind and spacing, inspect shows
    them, and evaluate --split-from scores another predictor on its held-out episodes."""
    from click.testing import CliRunner
    from invwnn.cli.main import main

    path = tmp_path / "e.zarr"
    episodes.collect_episodes(config(path, 4))
    out = tmp_path / "p.pt"
    small = ["--window", "5", "--back", "3", "--steps", "3", "--batch-size", "256", "--eval-per-kind", "50",
             "--val-fraction", "0.5", "--workers", "0", "--quiet"]
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--store", str(path), "--out", str(out), *small])
    assert result.exit_code == 0, result.output
    inspect = runner.invoke(main, ["inspect", str(out)])
    assert "data          episodes, snapshots 1 step(s) apart" in inspect.output
    other = tmp_path / "other.pt"
    save_checkpoint(other, Predictor(ModelConfig(k=5, u=3)), {}, {}, {"val_runs": []})
    result = runner.invoke(main, ["evaluate", str(other), "--store", str(path), "--split-from", str(out)])
    assert result.exit_code == 0 and "held out by p.pt" in result.output, result.output
    for extra, message in ((["--write"], "--split-from"), ([], "K=4")):
        save_checkpoint(other, Predictor(ModelConfig(k=4, u=3)), {}, {}, {"val_runs": []})
        result = runner.invoke(main, ["evaluate", str(other), "--store", str(path), "--split-from", str(out), *extra])
        assert result.exit_code != 0 and message in result.output and result.output.count("\n") == 1, result.output
