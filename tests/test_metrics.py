"""Metrics: the SalUn gap and an MIA that tells members from non-members on a real model."""
from __future__ import annotations


import pytest

from _apply_fixtures import tiny_original
from invwnn.inputs import splits as forget_io
from invwnn.audit import metrics
from invwnn.inputs import models


def test_gap_matches_brief_section_6():
    original = {"RA": 97.9, "UA": 1.2, "TA": 88.2, "MIA": 2.6}
    retrain = {"RA": 96.5, "UA": 11.4, "TA": 87.6, "MIA": 17.1}
    assert metrics.gap(original, retrain) == pytest.approx(6.675)
    assert metrics.gap({"UA": 3.0}, {"UA": 1.0, "RA": 5.0}) == pytest.approx(2.0)


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
