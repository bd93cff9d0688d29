"""Every registered method runs end to end on a tiny real model; rewinders do what they say."""
from __future__ import annotations

import copy

import pytest
import torch

from _apply_fixtures import tiny_original
from invwnn import forget as forget_io
from invwnn import models
from invwnn.methods import REGISTRY, Context, Data
from invwnn.methods.invwnn import LinearRewinder, NoRewinder
from invwnn.models import InputError

SMALL = {  # shortest settings that still exercise each method's whole path
    "invwnn": {"iterations": 2, "snapshots": 4, "every": 1, "warmup": 1},
    "retrain": {"epochs": 1.0}, "finetune": {"epochs": 1.0}, "neggrad": {"epochs": 1.0},
    "neggrad+": {"epochs": 1.0}, "random-label": {"epochs": 1.0}, "salun": {"epochs": 1.0},
    "boundary-shrink": {"epochs": 1.0}, "task-vector": {"epochs": 1.0}, "scrub": {"epochs": 1.0},
    "fisher": {"samples": 50}, "unsir": {"noise_size": 16, "noise_steps": 3, "retain_per_class": 20},
    "mnemonic": {},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    out = {}
    for name, kw in (("random", {}), ("mnemonic", {"forget": "classes", "forget_classes": ("Trouser",),
                                                   "mnemonic_mix": 0.1, "epochs": 3})):
        root = tiny_original(base, name, **kw)
        loaded = models.load(root / "model.pt")
        read = lambda s: forget_io.read(root / s, loaded.classes, loaded.preprocess)  # noqa: E731
        out[name] = (loaded, Data(read("forget"), loaded.classes, read("retain"), None, loaded.mnemonic))
    return out


def test_registry_covers_the_issue():
    assert set(REGISTRY) == {"invwnn", "unsir", "mnemonic", "retrain", "finetune", "neggrad", "neggrad+",
                             "random-label", "salun", "boundary-shrink", "task-vector", "scrub", "fisher"}
    for method in REGISTRY.values():
        cfg = method.config()
        assert type(cfg).from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_runs_and_changes_weights(setup, name):
    loaded, data = setup["mnemonic" if name == "mnemonic" else "random"]
    model = copy.deepcopy(loaded.model)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    bn_stats = model.net[1].running_mean.clone()
    ctx = Context(seed=0, rewinder=LinearRewinder(3), rebuild=loaded.rebuild)
    out = REGISTRY[name].run(model, data, REGISTRY[name].config.from_dict(SMALL[name]), ctx)
    after = torch.cat([p.detach().reshape(-1) for p in out.parameters()])
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert not torch.equal(after, before)
    if name == "invwnn":  # norms frozen: statistics and affine parameters untouched
        assert torch.equal(out.net[1].running_mean, bn_stats)
        assert torch.equal(out.net[1].weight, loaded.model.net[1].weight)


@pytest.mark.parametrize("name", ["unsir", "retrain", "finetune", "neggrad+", "random-label", "salun",
                                  "scrub", "fisher"])
def test_methods_that_need_retain_say_so(setup, name):
    loaded, data = setup["random"]
    no_retain = Data(data.forget, data.classes)
    with pytest.raises(InputError, match="--retain"):
        REGISTRY[name].run(copy.deepcopy(loaded.model), no_retain, REGISTRY[name].config(), Context())


def test_mnemonic_needs_codes(setup):
    loaded, data = setup["random"]
    with pytest.raises(InputError, match="--mnemonic-mix"):
        REGISTRY["mnemonic"].run(copy.deepcopy(loaded.model), data, REGISTRY["mnemonic"].config(), Context())


def test_rewinders():
    t = torch.arange(5, dtype=torch.float32)
    windows = torch.stack([2.0 + 0.5 * t, -1.0 - 0.25 * t, torch.zeros(5)])
    kinds = torch.zeros(3, dtype=torch.long)
    # a straight trajectory extrapolates exactly: value 3 snapshots before the first one
    assert torch.allclose(LinearRewinder(3).rewind(windows, kinds), torch.tensor([0.5, -0.25, 0.0]))
    assert torch.equal(NoRewinder().rewind(windows, kinds), windows[:, -1])
