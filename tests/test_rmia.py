"""Offline RMIA and JS divergence: the statistics against independent definitions, and the attack
on a case with a known answer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from invwnn.audit import rmia
from invwnn.inputs.splits import Split


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 20, 300).astype(float), rng.integers(0, 15, 200).astype(float)
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert rmia.auc(pos, neg) == pytest.approx(100 * pairs.mean())
    assert rmia.auc(np.ones(5), np.zeros(5)) == 100 and rmia.auc(np.zeros(5), np.ones(5)) == 0


def test_paired_se_matches_delongs_definition_and_cancels_shared_luck():
    """DeLong's variance from the explicit pairwise kernel matrices equals paired_se; a difference
    between two score sets that share the images' luck has a smaller standard error than either AUC
    alone, and none between a score set and itself."""
    rng = np.random.default_rng(1)
    luck_p, luck_n = rng.normal(0, 1, 80), rng.normal(0, 1, 60)  # each image's own ease, shared by both sides
    a = (luck_p + 0.3 + rng.normal(0, 0.3, 80), luck_n + rng.normal(0, 0.3, 60))
    b = [(luck_p + rng.normal(0, 0.3, 80), luck_n + rng.normal(0, 0.3, 60)) for _ in range(2)]

    def kernel(pos, neg):  # psi(x_i, y_j): 1 above, 1/2 tied, 0 below
        return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])

    d = kernel(*a) - (kernel(*b[0]) + kernel(*b[1])) / 2  # (80, 60): the difference's kernel
    v10, v01 = d.mean(1), d.mean(0)
    expected = 100 * np.sqrt(v10.var(ddof=1) / 80 + v01.var(ddof=1) / 60)
    assert rmia.paired_se(a, b) == pytest.approx(expected)
    place = rmia.placements(*a)
    assert 100 * place[0].mean() == pytest.approx(rmia.auc(*a)) and 100 * place[1].mean() == pytest.approx(rmia.auc(*a))
    alone = 100 * np.sqrt(kernel(*a).mean(1).var(ddof=1) / 80 + kernel(*a).mean(0).var(ddof=1) / 60)
    assert rmia.paired_se(a, b) < 0.7 * alone
    assert rmia.paired_se(a, [a]) == 0.0


def test_tpr_and_best_accuracy_on_known_cases():
    neg = np.arange(100.0)  # 1% of negatives exceed 98
    assert rmia.tpr_at_fpr(np.array([98.5, 99.5, 50.0, 0.0]), neg) == 50.0
    assert rmia.best_accuracy(np.array([10.0, 11.0]), np.array([1.0, 2.0])) == 100.0
    same = np.linspace(0, 1, 50)
    assert rmia.best_accuracy(same, same) == pytest.approx(50.0, abs=2.1)
    # one threshold separates 3 of 4 positives from every negative: (0.75 + 1) / 2
    assert rmia.best_accuracy(np.array([0.0, 5.0, 6.0, 7.0]), np.array([1.0, 2.0])) == 87.5


def test_rmia_scores_count_the_population_beaten():
    p_z, prior_z = np.array([0.1, 0.2, 0.4, 0.8]), np.full(4, 0.4)  # ratios 0.25, 0.5, 1, 2
    scores = rmia.rmia_scores(np.array([0.4, 0.9, 0.05]), np.array([0.4, 0.3, 0.5]), p_z, prior_z)
    assert scores.tolist() == [0.5, 1.0, 0.0]  # ratios 1 (beats 2), 3 (all 4), 0.1 (none)
    assert rmia.rmia_scores(np.array([0.4]), np.array([0.4]), p_z, prior_z, gamma=3.0).tolist() == [0.25]
    # a = 1 makes Pr(x) the references' mean; a = 0 the mean of that and 1
    refs = np.array([[0.2, 0.6], [0.4, 0.2]])
    assert rmia.offline_prior(refs, 1.0).tolist() == pytest.approx([0.3, 0.4])
    assert rmia.offline_prior(refs, 0.0).tolist() == pytest.approx([0.65, 0.7])


def test_js_divergence_bounds_and_symmetry():
    p = torch.softmax(torch.randn(20, 5, generator=torch.Generator().manual_seed(0)), 1)
    q = torch.softmax(torch.randn(20, 5, generator=torch.Generator().manual_seed(1)), 1)
    assert np.allclose(rmia.js_divergence(p, p), 0, atol=1e-9)
    assert np.allclose(rmia.js_divergence(p, q), rmia.js_divergence(q, p))
    one_hot = torch.eye(5)
    assert rmia.js_divergence(one_hot, one_hot.roll(1, 0)).tolist() == pytest.approx([1.0] * 5, abs=1e-6)


def _noise(n: int, seed: int) -> Split:
    """Images of noise with random labels: nothing to generalise, only to memorise."""
    g = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g), "noise")


def _memorise(*splits: Split, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 256), nn.ReLU(), nn.Linear(256, 4))
    x, y = torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(400):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.mark.learning
def test_rmia_finds_a_memorised_set_and_not_one_never_seen():
    """A model that memorised S scores S far above held-out images; Retrain, scored against the
    other references, tells S from held-out no better than chance."""
    retain, forget, test = _noise(300, 1), _noise(120, 2), _noise(600, 3)
    original = _memorise(retain, forget, seed=0)
    assert (original(forget.x).argmax(1) == forget.y).float().mean() > 0.9  # it memorised S
    refs = [_memorise(retain, seed=s) for s in (10, 11, 12, 13)]
    attack = rmia.Attack(refs, forget, test, seed=0)
    remembered = attack.figures(original)
    assert remembered["RMIA_AUC"] > 90 and remembered["RMIA_tail"] > 50 and remembered["RMIA_acc"] > 80
    assert remembered["RMIA_TPR1"] > 20 and remembered["JS_forget"] > 2 * remembered["JS_test"]
    assert 35 < attack.retrain["RMIA_AUC"] < 65 and attack.retrain["RMIA_acc"] < 65
    assert attack.figures(refs[0]) == attack.retrain
    # each reference against the others: the first is Retrain's; the memorised set stands far above them
    yards = attack.yardsticks()
    assert len(yards) == 4 and yards[0] == attack.retrain["RMIA_AUC"] and all(35 < y < 65 for y in yards)
    assert remembered["RMIA_AUC"] - sum(yards) / 4 > 10 * attack.paired_se(original)
    # another model trained without S stands where Retrain does
    stranger = attack.figures(_memorise(retain, seed=20))
    assert 30 < stranger["RMIA_AUC"] < 70 and stranger["RMIA_tail"] < 25


def test_attack_refuses_too_little_data():
    refs = [nn.Sequential(nn.Flatten(), nn.Linear(36, 4)) for _ in range(2)]
    with pytest.raises(ValueError, match="at least 2 reference"):
        rmia.Attack(refs[:1], _noise(10, 0), _noise(100, 1))
    with pytest.raises(ValueError, match="held-out images"):
        rmia.Attack(refs, _noise(10, 0), _noise(12, 1))


@pytest.mark.parametrize("name", ["label-noise", "backdoor", "random10"])
def test_held_out_candidates_are_drawn_like_the_forget_set(name):
    """A mislabelled forget set is compared with mislabelled held-out images, a triggered one with
    triggered images of other classes under the target label (clean candidates would score below
    any such forget set: no reference gives their labels probability); a clean one keeps clean
    images of its classes. The population stays clean, and the draw is the same every call."""
    from invwnn.bench import scenarios

    config = scenarios.ScenarioConfig(name=name, dataset="synthetic", train_size=400, test_size=400, val_size=100,
                                      forget_fraction=0.2)
    scn = scenarios.build(config, 0)
    like = scn.like_forget()
    heldout, population = rmia.attack_splits(scn.forget_split, scn.test, scn.seed, like)
    _, clean = rmia.attack_splits(scn.forget_split, scn.test, scn.seed)
    assert torch.equal(population.y, clean.y) and torch.equal(population.x, clean.x)
    if name == "random10":
        assert like is None
        return
    again, _ = rmia.attack_splits(scn.forget_split, scn.test, scn.seed, like)
    assert torch.equal(heldout.y, again.y) and torch.equal(heldout.x, again.x)
    perm = torch.randperm(len(scn.test), generator=torch.Generator().manual_seed(scn.seed + 4242))
    base = scn.test.subset(perm[len(scn.test) // 2:].sort().values)
    if name == "label-noise":
        assert torch.equal(heldout.x, base.x) and (heldout.y != base.y).all()
    else:
        assert (heldout.y == config.target_label).all() and scenarios.has_trigger(heldout.x, config.trigger_size).all()
        assert len(heldout) == int((base.y != config.target_label).sum())
        assert not scenarios.has_trigger(population.x, config.trigger_size).any()
