"""Counterfactual triples (trajgen counterfactuals): every pairing of family and forgetting rule,
seeds apart from the bench's, and for each of the six rules a counterfactual that never saw S:
not in its batches, not as a triggered image, not in an over-fitting phase."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trajgen import data as datasets
from trajgen import episode_spec, episodes, store, twins, verify
from trajgen import info as store_info
from trajgen.nets import flat_buffers, flat_weights, load_flat_buffers, load_flat_weights
from trajgen.train import batches, build_model, snapshots

PARENT_STEPS = 12


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(index: int) -> episode_spec.EpisodeSpec:
    return episode_spec.draw_counterfactual(0, index, "synthetic", parent_steps=PARENT_STEPS)


def test_the_draw_pairs_every_family_with_every_rule_and_avoids_the_benchs_seeds():
    specs = [episode_spec.draw_counterfactual(0, i) for i in range(300)]
    pairs = {(s.parent.arch.family, s.rule) for s in specs[:24]}
    assert pairs == set(itertools.product(episode_spec.COUNTERFACTUAL_ARCHS, episode_spec.COUNTERFACTUAL_RULES))
    assert all(s.twin and s.parent_index == s.index for s in specs)
    assert not {x for s in specs for x in (s.seed, s.parent.seed)} & episode_spec.RESERVED_SEEDS
    # a reserved draw is moved off, deterministically
    assert episode_spec._unreserved(100) != 100 and episode_spec._unreserved(7) == 7
    # an episode's record is what it was before triples existed
    assert "parent_backdoor" not in episodes.draw_episode(0, 0).to_dict()
    again = episode_spec.EpisodeSpec.from_dict(specs[17].to_dict())
    assert again == specs[17] and again.rule == "backdoor" and again.parent_backdoor > 0


@pytest.mark.parametrize("index", [0, 4, 8, 12, 16, 20])  # random, random-large, class, mislabelled, backdoor, overfit
def test_a_counterfactual_never_sees_s(index):
    s = spec(index)
    assert s.rule == episode_spec.COUNTERFACTUAL_RULES[index // 4]
    data = datasets.load_cached("synthetic", None)
    subset, labels = episode_spec.subset_indices(s, data)
    pool, special, view = episode_spec.parent_view(s, data)
    assert np.isin(subset, pool).all() and len(subset) >= 2
    if s.rule in ("mislabelled", "backdoor", "overfit"):
        np.testing.assert_array_equal(subset, special)  # the bench forgets all of them
    if s.rule == "backdoor":  # S carries the trigger and the target label; nothing else does
        corner = view.x_train[:, :, -episode_spec.TRIGGER:, -episode_spec.TRIGGER:]
        triggered = (corner == episode_spec.add_trigger(view.x_train[:1])[0, :, -4:, -4:]).flatten(1).all(1)
        assert triggered[torch.from_numpy(subset)].all()
        assert triggered[torch.from_numpy(np.setdiff1d(pool, subset))].float().mean() < 0.01
        assert (labels == episode_spec.BACKDOOR_TARGET).all()
    if s.rule == "random-large":
        assert len(subset) == len(pool) // 2
    order = twins.twin_order(s, data)
    parent = batches(len(pool), s.parent.batch_size, s.parent.seed)
    seen = 0
    for _ in range(3 * PARENT_STEPS):
        full = pool[next(parent).numpy()]
        seen += np.isin(full, subset).sum()
        if np.isin(full, subset).all():
            continue
        got = twins.training_indices(s, data, next(order))
        assert not np.isin(got, subset).any(), "the counterfactual saw an example of S"
    assert seen > 0, "the parent's batches must hold S, or the test shows nothing"


def test_an_overfit_parent_took_its_extra_steps_and_its_twin_did_not():
    """The parent is the plain training on its pool plus the over-fitting phase on S (its loss on S
    lower than the plain training's); the twin's batches (above) hold no S, so it has no such phase."""
    s = spec(20)
    data = datasets.load_cached("synthetic", None)
    pool, _, view = episode_spec.parent_view(s, data)
    pool_data = episode_spec.dataclasses.replace(view, x_train=view.x_train[pool], y_train=view.y_train[pool])
    plain = build_model(s.parent, pool_data)
    for _ in snapshots(s.parent, plain, pool_data):
        pass
    parent = episodes.parent_model(s)
    assert not torch.equal(flat_weights(parent), flat_weights(plain))
    subset, labels = episode_spec.subset_indices(s, data)
    x = datasets.to_float(view.x_train[torch.from_numpy(subset)])
    plain.eval(), parent.eval()
    with torch.no_grad():
        assert F.cross_entropy(parent(x), labels) < F.cross_entropy(plain(x), labels)


def test_a_triple_store_rebuilds_parent_and_counterfactual_with_their_norm_statistics(tmp_path):
    """Two triples (mlp, then a cnn with BatchNorm) written, verified, summarised by rule; the
    stored history starts at the parent, the buffers restore the parent's function exactly; a
    store with one side's statistics missing is flagged."""
    path = tmp_path / "c.zarr"
    config = episodes.EpisodeConfig(store=str(path), runs=2, parent_steps=PARENT_STEPS, dataset="synthetic",
                                    workers=0, twins=True, counterfactuals=True, progress=False)
    assert episodes.collect_episodes(config)["trained"] == 2
    assert episodes.collect_episodes(config)["skipped"] == 2
    # a kill while twin-000001 was written leaves it incomplete: the rerun rewrites it bit for bit
    root = store.open_store(path, mode="a")
    before = {k: a[:] for k, a in root["runs"]["twin-000001"].arrays()}
    root["runs"]["twin-000001"].attrs["complete"] = False
    assert episodes.collect_episodes(config)["trained"] == 1
    after = {k: a[:] for k, a in store.open_store(path)["runs"]["twin-000001"].arrays()}
    assert before.keys() == after.keys() and "counterfactual_buffers" in after
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert verify.verify(path).ok
    described = store_info.describe(path)
    assert described["by_rule"] == {"random": 2}
    assert "by rule" in store_info.format_description(described)

    s = spec(1)
    assert s.parent.arch.family == "cnn"
    root = store.open_store(path)
    g = root["runs"][s.name]
    data = datasets.load_cached("synthetic", None)
    rebuilt = build_model(s.parent, data)
    load_flat_weights(rebuilt, torch.from_numpy(g["history"][:, 0]))
    load_flat_buffers(rebuilt, torch.from_numpy(g["parent_buffers"][:]))
    parent = episodes.parent_model(s)
    parent.eval(), rebuilt.eval()
    x = datasets.to_float(data.x_test[:64])
    torch.testing.assert_close(rebuilt(x), parent(x))
    assert g["counterfactual_buffers"].shape == g["parent_buffers"].shape == (flat_buffers(parent).numel(),)
    assert "parent_buffers" not in root["runs"][spec(0).name]  # an mlp has none

    root = store.open_store(path, mode="a")
    del root["runs"][s.name]["counterfactual_buffers"]
    assert any("norm statistics" in p for p in verify.verify(path).problems)
