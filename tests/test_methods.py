"""The method registry (invwnn.unlearn.methods): every method runs end to end on a tiny real model,
says what data it needs and takes its flags; the shared loop's calibrated step; the invwnn family
(rewinders, invwnn+'s repair and neighbours). The field's baselines: test_methods_baselines.py."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _apply_fixtures import tiny_original
from invwnn.inputs import splits as forget_io
from invwnn.inputs import models
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods import REGISTRY, Context, Data, invwnn_plus
from invwnn.rewind import LinearRewinder, NoRewinder
from invwnn.unlearn.methods.invwnn import rewindable
from invwnn.bench import search
from invwnn.bench.rows import ROWS
from invwnn.cli.apply import apply
from invwnn.errors import InputError

SMALL = {  # shortest settings that still exercise each method's whole path
    "invwnn": {"iterations": 2, "snapshots": 4, "every": 1},
    "invwnn+": {"iterations": 2, "snapshots": 4, "repair_steps": 2},
    "retrain": {"epochs": 1.0}, "finetune": {"epochs": 1.0}, "neggrad": {"epochs": 1.0},
    "neggrad+": {"epochs": 1.0}, "random-label": {"epochs": 1.0}, "salun": {"epochs": 1.0},
    "boundary-shrink": {"epochs": 1.0}, "task-vector": {"epochs": 1.0}, "scrub": {"epochs": 1.0},
    "fisher": {"samples": 50}, "unsir": {"noise_size": 16, "noise_steps": 3, "retain_per_class": 20},
    "mnemonic": {}, "ssd": {"samples": 200}, "l1-sparse": {"epochs": 1.0}, "regun": {"epochs": 1.0},
    "amun": {"epochs": 1.0, "attack_steps": 5, "attack_rounds": 3},
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
    out["root"] = tiny_original(base, "random")
    return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_config_survives_its_json_round_trip_and_the_search_draws_inside_its_space(name):
    """A report's config reads back as the config that ran (through JSON, as reports store it); a
    method with a search space is searched from its defaults, every other candidate inside the space."""
    cfg = REGISTRY[name].config()
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    if name not in ROWS:
        return
    rows = search.search_method(name, search.TRIALS, search.TUNING_SEED,
                                lambda o: {"overrides": o, "reached": False, "gap": 1.0, "seconds": 1.0})
    cands = [r["overrides"] for r in rows]
    assert len(cands) == search.TRIALS and cands[0] == {k: getattr(cfg, k) for k in ROWS[name].space}
    for c in cands[1:]:
        for k, (kind, *args) in ROWS[name].space.items():
            assert c[k] in args[0] if kind == "choice" else args[0] * 0.999 <= c[k] <= args[1] * 1.001


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
    if name in ("invwnn", "invwnn+"):  # norms frozen: statistics and affine parameters untouched
        assert torch.equal(out.net[1].running_mean, bn_stats)
        assert torch.equal(out.net[1].weight, loaded.model.net[1].weight)


@pytest.mark.parametrize("name", ["unsir", "retrain", "finetune", "neggrad+", "random-label", "salun",
                                  "scrub", "fisher", "ssd", "l1-sparse", "regun"])
def test_methods_that_need_retain_say_so(setup, name):
    loaded, data = setup["random"]
    no_retain = Data(data.forget, data.classes)
    with pytest.raises(InputError, match="--retain"):
        REGISTRY[name].run(copy.deepcopy(loaded.model), no_retain, REGISTRY[name].config(), Context())


def test_the_cli_takes_a_methods_flags_and_refuses_anothers(setup, tmp_path):
    root = setup["root"]
    base = ["--model", str(root / "model.pt"), "--forget", str(root / "forget"), "--retain", str(root / "retain"),
            "--quiet"]
    r = CliRunner().invoke(apply, [*base, "--method", "ssd", "--alpha", "20", "--dampening", "0.5", "--samples", "300",
                                   "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m.json").read_text())["config"] == {"alpha": 20.0, "dampening": 0.5,
                                                                        "samples": 300, "batch_size": 128}
    r = CliRunner().invoke(apply, [*base, "--method", "ssd", "--lr", "0.1"])
    assert r.exit_code == 2 and "--lr is not a setting of method ssd" in r.output


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


def test_linear_rewinder_is_the_least_squares_line_extrapolated():
    g = torch.Generator().manual_seed(0)
    windows = torch.cumsum(torch.randn(50, 7, generator=g, dtype=torch.float64), 1)  # random walks
    got = LinearRewinder(4).rewind(windows, torch.zeros(50, dtype=torch.long))
    t = np.arange(7)
    want = [np.polyval(np.polyfit(t, w, 1), -4.0) for w in windows.numpy()]
    assert np.allclose(got.numpy(), want)


def _plus(model, data, rewinder, **overrides):
    config = REGISTRY["invwnn+"].config.from_dict({"iterations": 2, "snapshots": 4, **overrides})
    return REGISTRY["invwnn+"].run(model, data, config, Context(seed=0, rewinder=rewinder))


class _Spy:
    """Records which split each forward pass saw ("F" forget / "R" retain, told apart by a marker
    pixel) and when the rewinder ran."""

    def __init__(self, model, rewinder):
        self.events, self.inner = [], rewinder
        model.register_forward_pre_hook(self._forward)

    def _forward(self, _, args):
        marker = args[0][:, 0, 0, 0]
        kinds = {"F" if v == -7 else "R" if v == 7 else "?" for v in marker.tolist()}
        self.events.append(kinds.pop() if len(kinds) == 1 else "mixed")

    def rewind(self, windows, kinds, layers=None):
        self.events.append("rewind")
        return self.inner.rewind(windows, kinds, layers)


def test_invwnn_plus_rewinds_on_forget_data_and_repairs_on_retain_data(setup):
    loaded, data = setup["random"]
    forget, retain = copy.deepcopy(data.forget), copy.deepcopy(data.retain)
    forget.x[:, 0, 0, 0], retain.x[:, 0, 0, 0] = -7.0, 7.0
    model = copy.deepcopy(loaded.model)
    spy = _Spy(model, LinearRewinder(3))
    _plus(model, Data(forget, data.classes, retain), spy, repair_steps=2, every=2, lr=1e-3, repair_lr=1e-3,
          target_forget_acc=-1.0, restore_steps=0)  # given steps and target: no calibration or estimate passes
    one_iteration = ["F"] * (3 * 2) + ["rewind"] + ["R"] * 2 + ["F"]  # the last: the stop's check
    assert spy.events == one_iteration * 2


def test_invwnn_plus_flags_are_checked(setup):
    loaded, data = setup["random"]
    no_retain = Data(data.forget, data.classes)
    with pytest.raises(InputError, match="--retain"):
        _plus(copy.deepcopy(loaded.model), no_retain, LinearRewinder(3), repair_on="retain")
    with pytest.raises(InputError, match="--repair-on takes retain or neighbours"):
        _plus(copy.deepcopy(loaded.model), data, LinearRewinder(3), repair_on="test")
    model = copy.deepcopy(loaded.model)  # no repair, no retain needed
    assert _plus(model, no_retain, LinearRewinder(3), repair_steps=0) is model


def test_invwnn_plus_without_retain_repairs_on_neighbours(setup):
    loaded, data = setup["random"]
    model = copy.deepcopy(loaded.model)
    warned: list[str] = []
    ctx = Context(seed=0, rewinder=LinearRewinder(3), warn=warned.append)
    config = REGISTRY["invwnn+"].config(iterations=2, snapshots=4, repair_steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    REGISTRY["invwnn+"].run(model, Data(data.forget, data.classes), config, ctx)
    record = ctx.calibration["neighbours"]
    assert record["images"] == 4 * len(data.forget) and 0 <= record["keep_forget_label"] <= 100
    assert "repair_lr" in ctx.calibration  # the repair's step calibrated on the neighbours
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(data.forget_classes()) > 1 and warned == []
    # forget images of one class: the neighbours' labels would teach that class back, and the user is told
    label = int(data.forget.y.mode().values)
    one = data.forget.subset((data.forget.y == label).nonzero().squeeze(1))
    REGISTRY["invwnn+"].run(copy.deepcopy(loaded.model), Data(one, data.classes), config.from_dict(
        {**config.to_dict(), "iterations": 1}), ctx)
    assert len(warned) == 1 and repr(data.classes[label]) in warned[0] and "--retain" in warned[0]


def _centred(model, x):
    with torch.no_grad():
        out = model(x)
    return out - out.mean(1, keepdim=True)


def test_calibrated_lr_makes_one_adam_step_move_the_outputs_by_the_step_size():
    """The mechanism behind the default step: after one real Adam step at the calibrated lr the
    probe's centred logits moved by about ``step_size`` (rms), and a wider network (more
    coordinates, each moved by lr) gets a smaller lr for the same step."""
    from invwnn.unlearn.methods.loop import calibrate_lr
    x, y, probe = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)), torch.rand(64, 1, 8, 8)
    lrs = {}
    for width in (8, 256):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(),
                                  torch.nn.Linear(width, 10))
        params = list(net.parameters())
        before = [p.detach().clone() for p in params]
        loss = lambda: torch.nn.functional.cross_entropy(net(x), y)  # noqa: E731
        record = calibrate_lr(net, params, loss, probe, "adam", 0.05)
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # the probe left no trace
        assert record["measured"] == pytest.approx(0.05, rel=0.25) and record["probe_images"] == 64
        start = _centred(net, probe)
        opt = torch.optim.Adam(params, lr=record["lr"])
        opt.zero_grad()
        loss().backward()
        opt.step()
        assert (_centred(net, probe) - start).pow(2).mean().sqrt().item() == pytest.approx(0.05, rel=0.25)
        lrs[width] = record["lr"]
    assert lrs[256] < lrs[8] / 2


def test_invwnn_records_its_calibrated_step_and_a_given_lr_skips_it(setup):
    loaded, data = setup["random"]
    for overrides, calibrated in (({}, True), ({"lr": 1e-4}, False)):
        model = copy.deepcopy(loaded.model)
        ctx = Context(rewinder=LinearRewinder(3.0))
        REGISTRY["invwnn+"].run(model, data, REGISTRY["invwnn+"].config(iterations=1, snapshots=3, repair_steps=1,
                                                                         **overrides), ctx)
        assert ("lr" in ctx.calibration) == calibrated and "repair_lr" in ctx.calibration
        if calibrated:
            rec = ctx.calibration["lr"]
            assert rec["lr"] > 0 and rec["measured"] == pytest.approx(rec["step_size"], rel=0.5)


def test_the_rewind_records_its_cost_and_bfloat16_stays_close(setup):
    """The loop times its rewinds; a bfloat16 rewind lands near the float32 one (the learned
    predictor, the same fine-tuning), and a precision it does not know is refused."""
    loaded, data = setup["random"]
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = copy.deepcopy(loaded.model)
        ctx = Context()  # the rewinder the config asks for: the shipped K = 5 predictor
        config = REGISTRY["invwnn+"].config(iterations=1, snapshots=5, repair_steps=0, lr=1e-3, rewind_dtype=dtype)
        REGISTRY["invwnn+"].run(model, Data(data.forget, data.classes), config, ctx)
        n = sum(p.numel() for p in rewindable(model)[0])
        assert ctx.rewind["calls"] == 1 and ctx.rewind["coordinates"] == n and ctx.rewind["seconds"] > 0
        out[dtype] = torch.cat([p.detach().reshape(-1) for p in rewindable(model)[0]])
    start = torch.cat([p.detach().reshape(-1) for p in rewindable(loaded.model)[0]])
    moved = (out["float32"] - start).abs().mean()
    assert (out["bfloat16"] - out["float32"]).abs().mean() < 0.1 * moved
    with pytest.raises(InputError, match="rewind-dtype"):
        REGISTRY["invwnn"].run(copy.deepcopy(loaded.model), data, REGISTRY["invwnn"].config(rewind_dtype="half"),
                               Context(rewinder=LinearRewinder(3.0)))


def test_restore_stops_where_forget_accuracy_would_pass_its_ceiling(setup):
    """invwnn+'s last phase trains on retain until retain accuracy is back, but never lets forget
    accuracy rise past the ceiling: with no slack over an estimate of 0 the first check that
    finds forget accuracy a point higher puts the starting weights back; with room it restores retain."""
    loaded, data = setup["random"]
    torch.manual_seed(0)
    damaged = copy.deepcopy(loaded.model)
    with torch.no_grad():
        for p in rewindable(damaged)[0]:
            p.add_(0.5 * p.std() * torch.randn_like(p))  # lowers every accuracy, as a rewind does
    sample = invwnn_plus.Sampler(data.retain, 64, torch.Generator().manual_seed(0), "cpu")
    for slack, ceiling_bites in ((0.0, True), (100.0, False)):
        model = copy.deepcopy(damaged)
        params = rewindable(model)[0]
        start = [p.detach().clone() for p in params]
        ctx = Context(seed=0)
        ctx.estimate = {"forget_acc": 0.0}
        ctx.restore = {"retain_acc_before": 100.0, "forget_acc_before": 100.0}
        config = REGISTRY["invwnn+"].config(restore_steps=60, forget_slack=slack, restore_within=0.0)
        invwnn_plus.restore(model, params, sample, 3e-3, data, config, ctx)
        r = ctx.restore
        assert r["forget_acc_end"] <= r["ceiling"] and r["steps"] >= invwnn_plus.RESTORE_EVERY
        if ceiling_bites:
            assert r["ended"].startswith("forget accuracy rose above the ceiling")
            assert all(torch.equal(a, b) for a, b in zip(start, params)) and r["forget_acc_end"] == r["forget_acc_start"]
        else:
            assert r["ended"] == "steps spent" and r["retain_acc_end"] > r["retain_acc_start"] + 5
