"""invwnn.bench.scenarios and the cache of originals: scenario builders on real Fashion-MNIST, the
validation split kept apart from every test and training image, and originals and Retrains cached."""
from __future__ import annotations

import pytest
import torch

from invwnn.bench import prepare, scenarios, search
from trajgen import data as datasets


@pytest.fixture(scope="module")
def ds():
    return datasets.load("fashion-mnist")


def build(ds, name, seed=0, **kw):
    return scenarios.build(scenarios.scenario_config(name, train_size=1000, test_size=500, **kw), seed, ds)


def test_label_noise_labels_really_are_wrong(ds):
    s = build(ds, "label-noise")
    assert s.forget.sum() == 200  # 20% of 1000
    assert (s.y[s.forget] != s.clean_y[s.forget]).all()
    assert (s.y[~s.forget] == s.clean_y[~s.forget]).all()
    assert s.y.min() >= 0 and s.y.max() < len(s.classes)
    # the wrong labels are spread over the other classes, not one fixed shift
    shifts = (s.y[s.forget] - s.clean_y[s.forget]) % len(s.classes)
    assert len(set(shifts.tolist())) == len(s.classes) - 1


def test_backdoor_trigger_in_forget_split_only(ds):
    s = build(ds, "backdoor")
    size, target = s.config.trigger_size, s.config.target_label
    assert s.forget.sum() == 200
    assert scenarios.has_trigger(s.x[s.forget], size).all()
    assert (s.y[s.forget] == target).all()
    assert not scenarios.has_trigger(s.x[~s.forget], size).any()
    assert not scenarios.has_trigger(s.test.x, size).any()  # the clean test set is clean
    trig = s.extras["triggered_test"]
    assert scenarios.has_trigger(trig.x, size).all() and (trig.y == target).all()
    assert len(trig) == int((s.test.y != target).sum())
    # the trigger changes only its corner: the rest of each image is the clean test image
    clean = s.test.x[s.test.y != target]
    assert torch.equal(trig.x[:, :, :-size, :], clean[:, :, :-size, :])


def test_class_random_and_overfit_splits(ds):
    s = build(ds, "class", forget_class=3)
    assert (s.y[s.forget] == 3).all() and not (s.y[~s.forget] == 3).any()
    assert s.config.mnemonic_mix > 0
    r = build(ds, "random50")
    assert r.forget.sum() == 500
    assert torch.equal(r.forget, build(ds, "random50").forget)  # deterministic in the seed
    assert not torch.equal(r.forget, build(ds, "random50", seed=1).forget)
    o = build(ds, "overfit")
    assert o.forget.sum() == 10 and o.config.overfit_steps > 0
    quick, full = scenarios.scenario_config("random10", quick=True), scenarios.scenario_config("random10")
    assert quick.train_size < full.train_size and quick.epochs < full.epochs
    with pytest.raises(Exception, match="unknown scenario"):
        scenarios.scenario_config("nope")


def test_original_and_retrain_are_cached(ds, tmp_path):
    cfg = scenarios.scenario_config("random10", quick=True, train_size=300, test_size=100, epochs=1.0, width=4)
    s = scenarios.build(cfg, 0, ds)
    a = prepare.prepare(s, tmp_path)
    b = prepare.prepare(s, tmp_path)
    assert not a.meta["original"]["cache_hit"] and b.meta["original"]["cache_hit"] and b.meta["retrain"]["cache_hit"]
    for m1, m2 in ((a.original, b.original), (a.retrain, b.retrain)):
        for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
            assert torch.equal(v1, v2), k
    # another seed is another key; the retrained model never saw the forget set, so it differs
    assert prepare.prepare(scenarios.build(cfg, 1, ds), tmp_path).meta["original"]["cache_key"] != a.meta["original"]["cache_key"]
    assert not torch.equal(a.original.net[0].weight, a.retrain.net[0].weight)


@pytest.mark.parametrize("name", scenarios.TUNABLE)
def test_validation_never_shares_an_image_with_test_or_training(ds, name):
    """For the reported seeds and the tuning seed, at full size: validation images come from the
    training pool outside the training subset, so they are disjoint from every test image (another
    pool) and from what the original trained on; the tuning view measures on them."""
    config = scenarios.scenario_config(name)
    for seed in (0, 1, 2, search.TUNING_SEED):
        s = scenarios.build(config, seed, ds)
        (vp, val), (tp, train), (sp, test) = s.index["val"], s.index["train"], s.index["test"]
        assert vp == tp == "train" and sp == "test"
        assert len(val) == config.val_size and not set(val.tolist()) & set(train.tolist())
        assert torch.equal(s.val.x, datasets.to_float(ds.x_train[val]))  # the split holds what the index says
        assert torch.equal(s.test.x[:, :, :-4, :-4], datasets.to_float(ds.x_test[test])[:, :, :-4, :-4])
        view = s.for_tuning()
        assert view.test is s.val and not view.extras and "test" not in view.index
        assert view.fingerprint()["val"] == s.fingerprint()["val"] and "test" not in view.fingerprint()
