"""The stop's estimate of Retrain's forget accuracy (invwnn.unlearn.estimate): each source on data
where Retrain's answer is known, the label vote, the learning-curve carry, the neighbours."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invwnn.errors import InputError
from invwnn.inputs.splits import Split
from invwnn.unlearn import estimate as est
from invwnn.unlearn.methods import Data

CLASSES = tuple("abc")


def blobs(n: int, seed: int, noise: float = 0.6) -> Split:
    """Three classes of 1x4x4 images: a class's prototype (a bright row) plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.zeros(n, 1, 4, 4)
    x[torch.arange(n), 0, y] = 1.0
    return Split(x + noise * torch.randn(n, 1, 4, 4, generator=g), y, f"blobs{seed}")


def fit(split: Split, steps: int = 300) -> nn.Module:
    """A linear classifier trained on ``split`` (full batch, Adam)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(split.x), split.y).backward()
        opt.step()
    return model.eval()


def acc(model: nn.Module, split: Split) -> float:
    with torch.no_grad():
        return 100.0 * (model(split.x).argmax(1) == split.y).float().mean().item()


def test_label_vote_agrees_with_true_labels_and_not_with_wrong_ones():
    ref, queries = blobs(600, 0, noise=0.1), blobs(200, 1, noise=0.1)
    assert est.label_agreement(queries, ref) == 100.0
    wrong = Split(queries.x, (queries.y + 1) % 3, "wrong")
    assert est.label_agreement(wrong, ref) == 0.0
    # leaving itself out: an image whose only twin is itself gets the others' vote
    assert est.label_agreement(ref, ref, self_index=torch.arange(len(ref))) == 100.0
    lone = Split(torch.cat([ref.x, queries.x[:1]]), torch.cat([ref.y, (queries.y[:1] + 1) % 3]), "lone")
    assert est.label_agreement(lone.subset(torch.tensor([len(ref)])), lone, self_index=torch.tensor([len(ref)])) == 0.0


@pytest.mark.parametrize("kind", ["sample", "mislabelled"])
def test_held_out_estimate_lands_near_a_true_retrain(kind):
    """Known answer: train the original on everything, Retrain on the retain part only, and compare
    Retrain's forget accuracy with the estimate made from the original, the test and retain sets."""
    data = blobs(1200, 2)
    forget_idx = torch.arange(300)
    y = data.y.clone()
    if kind == "mislabelled":
        y[forget_idx] = (y[forget_idx] + 1 + torch.randint(2, (300,), generator=torch.Generator().manual_seed(3))) % 3
    train = Split(data.x, y, "train")
    forget, retain = train.subset(forget_idx), train.subset(torch.arange(300, 1200))
    test = blobs(600, 4)
    original, retrain = fit(train), fit(retain)
    found = est.estimate(original, Data(forget, CLASSES, retain, test), None, "cpu", torch.Generator().manual_seed(0))
    assert found.source == "held-out"
    truth = acc(retrain, forget)
    assert abs(found.forget_acc - truth) < 8.0, (found, truth)
    if kind == "mislabelled":
        assert found.detail["factor"] < 0.25
    else:
        assert found.detail["factor"] == 1.0
    # without retain, the test images vote (each leaving itself out): the same answer, near enough
    alone = est.estimate(original, Data(forget, CLASSES, None, test), None, "cpu", torch.Generator().manual_seed(0))
    assert alone.source == "held-out" and abs(alone.forget_acc - truth) < 10.0


def test_sources_in_order_target_absent_classes_neighbours():
    split = lambda labels: Split(torch.rand(len(labels), 1, 8, 8), torch.tensor(labels), "s")  # noqa: E731
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    g = torch.Generator().manual_seed(0)
    gone = Data(split([2, 2]), CLASSES, split([0, 1, 0]), split([2, 0]))
    assert est.estimate(model, gone, None, "cpu", g).forget_acc == 0.0  # Retrain never predicts a class it never saw
    assert est.estimate(model, gone, 40.0, "cpu", g).to_dict() == {"forget_acc": 40.0, "source": "target", "detail": {}}
    only = est.estimate(model, Data(split([1, 2, 1]), CLASSES), None, "cpu", g)
    assert only.source == "neighbours" and only.detail["images"] == 12 and 0 <= only.forget_acc <= 100
    no_class_in_test = est.estimate(model, Data(split([1]), CLASSES, split([0, 1]), split([0, 0])), None, "cpu", g)
    assert no_class_in_test.source == "neighbours"
    assert "Retrain" in only.describe() and "shifted copies" in only.describe()


def test_fewer_images_raises_the_error_by_the_learning_curve():
    assert est.fewer_images(80.0, 100, 100) == 80.0
    assert est.fewer_images(80.0, 200, 100) == pytest.approx(100 - 20 * 2 ** est.LEARNING_CURVE)
    assert est.fewer_images(100.0, 200, 100) == 100.0


def test_neighbours_are_shifted_forget_images_labelled_by_the_model(monkeypatch):
    """Known answer: each forget image is one lit pixel; every copy is that pixel moved at most the
    shift (2 pixels of 28 at 0.07) each way, and its label is the model's prediction on the copy."""
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randint(4, 24, (30,), generator=g), torch.randint(4, 24, (30,), generator=g)
    x = torch.zeros(30, 1, 28, 28)
    x[torch.arange(30), 0, rows, cols] = 1.0
    forget = Split(x, torch.zeros(30, dtype=torch.long), "forget")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    split, source, near = est.neighbours(model, forget, 3, 0.07, torch.Generator().manual_seed(1), "cpu")
    assert len(split) == 90 and torch.equal(source, torch.arange(90) % 30)
    lit = split.x[:, 0].flatten(1).argmax(1)
    assert torch.all(split.x.flatten(1).sum(1) == 1)  # the pixel stays inside the image
    dr, dc = lit // 28 - rows[source], lit % 28 - cols[source]
    reach = torch.maximum(dr.abs(), dc.abs())
    assert reach.max() == 2 and reach.min() == 1  # never the forget image itself
    assert torch.equal(near, reach == 1) and 0 < near.sum() < 90
    with torch.no_grad():
        assert torch.equal(split.y, model(split.x).argmax(1))
    monkeypatch.setattr(est, "NEIGHBOUR_BYTES", 40 * 28 * 28 * 4)  # room for 40 images
    split, source, _ = est.neighbours(model, forget, 3, 0.07, torch.Generator().manual_seed(1), "cpu")
    assert len(split) == 40 and len(source.unique()) > 20
    with pytest.raises(InputError, match="--neighbour-copies"):
        est.neighbours(model, forget, 0, 0.07, g, "cpu")
