"""The unlearning metrics (invwnn.audit.metrics, and the bench's one-pass copy in invwnn.bench.measure):
each against a case worked out by hand, and the MIA on a real model.

The hand-worked cases use a lookup, not a network: image pixel [0, 0, 0] holds p, and the model puts
probability p on class 0 and 1 - p on class 1. So accuracy and the confidence of every sample are
chosen by the test, and the membership classifier's answer is known in advance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from _apply_fixtures import tiny_original
from invwnn.audit import metrics
from invwnn.bench.measure import gap as bench_gap
from invwnn.bench.measure import measure, mia_from_confidence
from invwnn.inputs import models
from invwnn.inputs import splits as forget_io
from invwnn.inputs.splits import Split


class Lookup(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, 0, 0, 0].clamp(1e-6, 1 - 1e-6)
        return torch.stack([p.log(), (1 - p).log()], 1)


def split(ps, ys, name="s") -> Split:
    x = torch.zeros(len(ps), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(ps, dtype=torch.float32)
    return Split(x, torch.tensor(ys), name)


def test_accuracy_by_hand():
    # p > 0.5 predicts class 0: predictions 0, 0, 1, 1 against labels 0, 1, 1, 1 -> 3 of 4 right
    s = split([0.9, 0.8, 0.3, 0.1], [0, 1, 1, 1])
    assert metrics.accuracy(Lookup(), s.x, s.y) == pytest.approx(75.0)
    conf = metrics.confidence(Lookup(), s.x, s.y)
    np.testing.assert_allclose(conf, [0.9, 0.2, 0.7, 0.9], atol=1e-5)


def test_mia_separable_members_known_answer():
    # members are confident (>= 0.9), non-members are not (<= 0.4): an RBF SVC splits them, so a
    # forget sample is called non-member exactly when its confidence is low. 1 of 4 is low -> 25%.
    rng = np.random.default_rng(0)
    member = rng.uniform(0.9, 1.0, 200)
    non_member = rng.uniform(0.05, 0.4, 200)
    forget = np.array([0.97, 0.95, 0.99, 0.2])
    assert mia_from_confidence(member, non_member, forget) == pytest.approx(25.0)
    assert mia_from_confidence(member, non_member, np.array([0.1, 0.15])) == pytest.approx(100.0)
    assert mia_from_confidence(member, non_member, np.array([0.92, 0.99])) == pytest.approx(0.0)


def test_full_metrics_on_constructed_model():
    """RA, UA, TA, MIA of the lookup model on splits built to give 80 / 20 / 50 / 40."""
    n = 100
    # retain: members, all label 0, confidence 0.9..0.99 -> all predicted 0 except 20 whose label is 1
    ps_r = list(np.linspace(0.9, 0.99, n))
    retain = split(ps_r, [0] * 80 + [1] * 20)
    # test: label 1, p in 0.6..0.7 -> predicted 0, confidence of label 1 = 0.3..0.4: half right
    # (p < 0.5 for the first 50)
    ps_t = list(np.linspace(0.3, 0.4, 50)) + list(np.linspace(0.6, 0.7, 50))
    test = split(ps_t, [1] * n)
    # forget: 5 samples, label 0, p = 0.97, 0.95, 0.93, 0.65, 0.35: the first four are right
    # (p > 0.5) -> forget accuracy 80, UA 20. Their confidences 0.97, 0.95, 0.93 sit in the member
    # cloud (0.9..0.99); 0.65 and 0.35 sit inside the non-member clouds -> MIA 2 of 5 = 40%.
    forget = split([0.97, 0.95, 0.93, 0.65, 0.35], [0] * 5)
    m = metrics.evaluate(Lookup(), forget, retain, test)
    assert m["RA"] == pytest.approx(80.0)
    assert m["UA"] == pytest.approx(20.0)
    assert m["TA"] == pytest.approx(50.0)
    # members: retain confidences 0.9..0.99 (label 0) and 0.01..0.1 (the 20 label-1 samples);
    # non-members: test confidences of label 1, 1 - p, in 0.3..0.4 and 0.6..0.7
    assert m["MIA"] == pytest.approx(40.0)
    b = measure(Lookup(), forget, retain, test)
    for k in ("RA", "UA", "TA", "MIA"):
        assert b[k] == pytest.approx(m[k]), k


def test_gap_by_hand():
    a = {"RA": 90.0, "UA": 10.0, "TA": 80.0, "MIA": 20.0}
    r = {"RA": 80.0, "UA": 20.0, "TA": 80.0, "MIA": 40.0}
    assert bench_gap(a, r) == pytest.approx(10.0)  # (10 + 10 + 0 + 20) / 4
    assert metrics.gap(a, r) == pytest.approx(10.0)
    assert metrics.gap({"UA": 3.0}, {"UA": 1.0, "RA": 5.0}) == pytest.approx(2.0)  # the metrics both hold
    assert math.isnan(metrics.gap({}, r))


def test_bench_measure_matches_library_evaluate():
    """On a real (random) network, with |retain| = |test| (so RA sees the whole retain set), the
    one-pass bench measure equals invwnn.audit.metrics.evaluate."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    mk = lambda n: Split(torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g), "x")
    forget, retain, test = mk(30), mk(60), mk(60)
    a = metrics.evaluate(net, forget, retain, test, seed=3)
    b = measure(net, forget, retain, test, seed=3)
    for k in ("RA", "UA", "TA", "MIA"):
        assert b[k] == pytest.approx(a[k]), k


def test_mia_calls_test_images_non_members_more_often_than_training_images(tmp_path_factory):
    root = tiny_original(tmp_path_factory.getbasetemp())
    loaded = models.load(root / "model.pt")
    read = lambda name: forget_io.read(root / name, loaded.classes, loaded.preprocess)  # noqa: E731
    retain, test = read("retain"), read("test")
    on_members = metrics.mia_efficacy(loaded.model, retain, test, retain.subset(slice(0, 400)))
    on_non_members = metrics.mia_efficacy(loaded.model, retain, test, test)
    assert 0 <= on_members < on_non_members <= 100
    scores = metrics.evaluate(loaded.model, read("forget"), retain, test)
    assert set(scores) == {"UA", "RA", "TA", "MIA"} and scores["RA"] > scores["TA"]
