"""invwnn.rewind's one factory: every kind, what each describes, the shipped checkpoints by name,
and the one-line errors of a wrong kind, window or file."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from invwnn.errors import InputError
from invwnn.rewind import (REWINDERS, SHIPPED, FullPrecision, LearnedRewinder, LinearRewinder, MetaRewinder, NoRewinder,
                           ResetRewinder, make_rewinder, shipped_path)
from invwnn.rewind.meta import MetaConfig, MetaNet, save
from invwnn.rewind.predictor import read_checkpoint, recorded_spacing
from invwnn.unlearn.methods import REGISTRY

PLUS = REGISTRY["invwnn+"].config  # K = 5: the window of every shipped checkpoint but default-k15


def windows(n=200, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g) + 0.01 * torch.randn(n, k, generator=g).cumsum(1)


@pytest.mark.parametrize("kind", REWINDERS)
def test_every_kind_rewinds_and_describes_itself_as_json(kind):
    rewinder = make_rewinder(kind, PLUS(horizon=1.5), "cpu")
    w = windows()
    past = rewinder.rewind(w, torch.zeros(len(w), dtype=torch.long), torch.zeros(len(w), dtype=torch.long))
    assert past.shape == (len(w),) and torch.isfinite(past).all()
    desc = json.loads(json.dumps(rewinder.describe()))
    assert desc["rewinder"] == kind
    if kind in ("learned", "meta"):  # what it read, and which bytes
        assert desc["predictor"] == str(shipped_path("default-k5" if kind == "learned" else "meta"))
        assert len(desc["sha256"]) == 64 and desc["horizon"] == 1.5


def test_the_controls_and_the_line_are_what_they_say():
    w = windows()
    assert torch.equal(make_rewinder("none", PLUS()).rewind(w), w[:, -1])
    assert torch.equal(make_rewinder("reset", PLUS()).rewind(w), w[:, 0])
    t = torch.arange(5.0)
    line = torch.stack([1.0 + 0.5 * t, -2.0 * t])
    # atol: the exact 0 comes out as 1.2e-7 (float32 rounding of 1 - 2 x 0.5)
    assert torch.allclose(make_rewinder("linear", PLUS(horizon=2.0)).rewind(line), torch.tensor([0.0, 4.0]), atol=1e-6)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_checkpoint_loads_by_its_short_name(name):
    k = 15 if name == "default-k15" else 5
    every = 1 if name == "meta" else (recorded_spacing(read_checkpoint(shipped_path(name))) or [1])[0]
    rewinder = make_rewinder("learned", PLUS(snapshots=k, every=every, lr=1e-3), "cpu", name)
    assert isinstance(rewinder, MetaRewinder if name == "meta" else LearnedRewinder) and rewinder.k == k
    w, layers = windows(k=k), torch.arange(200) // 100
    assert torch.isfinite(rewinder.rewind(w, torch.zeros(200, dtype=torch.long), layers)).all()


def test_a_checkpoint_file_is_told_apart_by_reading_it(tmp_path):
    """--predictor takes a meta rewinder's file under the default kind; an untrained one is the line."""
    path = tmp_path / "m.pt"
    net = MetaNet(MetaConfig(k=5, horizon=3.0))
    save(net, {"version": 1, "config": {"k": 5, "horizon": 3.0, "width": 32, "context": []}}, path)
    rewinder = make_rewinder("learned", PLUS(horizon=6.0), "cpu", path)
    assert rewinder.describe()["rewinder"] == "meta"
    w = windows()
    stretched = rewinder.rewind(w) - w[:, 0]
    torch.testing.assert_close(stretched, 2 * (LinearRewinder(3.0).rewind(w) - w[:, 0]))  # horizon 6 of the net's 3


def test_bad_input_is_one_line(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": torch.zeros(2)}, foreign)
    cases = [(("reset-all", PLUS(), None), "unknown rewinder 'reset-all'"),
             (("learned", PLUS(snapshots=9), None), "no shipped predictor has window K = 9"),
             (("learned", PLUS(snapshots=15), "default-k5"), "does not match the predictor's window K = 5"),
             (("meta", PLUS(), "default-k5"), "not a meta rewinder's"),
             (("learned", PLUS(), foreign), "not an invwnn predictor checkpoint"),
             (("learned", PLUS(), tmp_path / "nope.pt"), "no such checkpoint"),
             (("linear", PLUS(), "default-k5"), "reads no checkpoint"),
             (("learned", PLUS(lr=None), "episodes-context"), "give --lr")]
    for (kind, config, checkpoint), message in cases:
        with pytest.raises(InputError, match=message) as err:
            make_rewinder(kind, config, "cpu", checkpoint)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no shipped checkpoint"):
        shipped_path("default-k7")


def test_full_precision_rewinds_in_float32_inside_autocast():
    w = windows()
    inner = make_rewinder("learned", PLUS(), "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped = FullPrecision(inner, "cpu").rewind(w, torch.zeros(len(w), dtype=torch.long))
    assert wrapped.dtype == torch.float32
    torch.testing.assert_close(wrapped, inner.rewind(w, torch.zeros(len(w), dtype=torch.long)))
    assert FullPrecision(NoRewinder(), "cpu").describe() == {"rewinder": "none"} and ResetRewinder().describe()


def test_unlearning_imports_no_training_code():
    """`invwnn apply` as a library reads checkpoints without the store, the collector or the trainer."""
    code = ("import sys, invwnn.unlearn.apply; print(sorted(m for m in sys.modules if m.startswith("
            "('invwnn.train', 'trajgen.store', 'trajgen.collect', 'zarr', 'dask'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
