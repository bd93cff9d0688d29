"""Windows: normalisation round trips, the line is exact on lines, store reads equal raw histories."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trajgen.nets import KINDS
from trajgen.store import complete_runs, open_run
from invwnn.rewind import LinearRewinder
from invwnn.rewind.features import denormalise, normalise, normalise_target
from invwnn.train.windows import (WindowError, WindowStream, check_windows, cut_windows, kind_codes, read_block,
                                  run_blocks)
from trajgen.store import open_store


def random_windows(n=500, k=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** torch.empty(n, 1).uniform_(-5, 1, generator=g)
    return (torch.randn(n, 1, generator=g) + torch.randn(n, k, generator=g).cumsum(1) * 0.1) * scale


def test_normalisation_round_trips_and_is_scale_free():
    w = random_windows()
    target = w[:, 0] - 0.5 * (w[:, 1] - w[:, 0])  # a plausible past, well inside the clip
    x, offset, scale = normalise(w)
    assert torch.allclose(x[:, 0], torch.zeros(len(w)))
    assert (x.amax(1) - x.amin(1) <= 1).all()
    r = normalise_target(target, offset, scale, clip=8.0)
    assert torch.allclose(denormalise(r, offset, scale), target, rtol=1e-5, atol=0)
    assert torch.allclose(denormalise(x[:, 5], offset, scale), w[:, 5], rtol=1e-5, atol=0)
    x1000, _, _ = normalise(w * 1000.0)
    assert torch.allclose(x, x1000, atol=1e-5)


def test_flat_window_is_finite_and_residual_is_clipped():
    w = torch.zeros(3, 15)
    w[1] = 0.25  # constant, non-zero: scale falls back to eps * |w|
    x, offset, scale = normalise(w)
    assert torch.isfinite(x).all() and (scale > 0).all()
    r = normalise_target(torch.tensor([1.0, 1.0, -1.0]), offset, scale, clip=8.0)
    assert r.abs().max() == 8.0


@pytest.mark.parametrize("k", [2, 3, 5, 15])
def test_the_line_is_exact_on_lines(k):
    t = torch.arange(k, dtype=torch.float32)
    w = torch.stack([0.3 + 0.01 * t, -2.0 - 0.5 * t])
    pred = LinearRewinder(3).rewind(w)
    assert torch.allclose(pred, torch.tensor([0.3 - 0.03, -2.0 + 1.5]), atol=1e-5)


def test_cut_windows_equal_raw_histories(small_store):
    root = open_store(small_store)
    run = complete_runs(small_store)[0]
    raw = open_run(small_store, run).history[:]  # whole history, read independently of the blocks
    for block in [b for b in run_blocks(small_store, [run])][:2]:
        h, codes, _, _ = read_block(root, block)
        w, target, kind, rows, starts = cut_windows(h, codes, 15, 3, 3, np.random.default_rng(0),
                                                    kind_codes(KINDS), return_index=True)
        src = rows + block.c0
        assert len(w) == 3 * (block.c1 - block.c0)
        assert (starts >= 3).all() and (starts + 15 <= raw.shape[1]).all()
        np.testing.assert_array_equal(w, raw[src[:, None], starts[:, None] + np.arange(15)])
        np.testing.assert_array_equal(target, raw[src, starts - 3])
        np.testing.assert_array_equal(kind, open_run(small_store, run).kind[src])


def test_stream_covers_every_coordinate_once_per_epoch_across_workers(small_store):
    runs = complete_runs(small_store)[:3]
    ds = WindowStream(small_store, runs, 15, 3, batch_size=1000, kinds=("linear", "bias", "norm"),
                      per_coord=1, buffer=5000, epochs=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    kinds = torch.cat([b["kind"] for b in loader])
    expected = np.concatenate([open_run(small_store, r).kind for r in runs])
    for name in ("linear", "bias", "norm", "conv"):
        code = KINDS.index(name)
        want = int((expected == code).sum()) if name != "conv" else 0
        assert int((kinds == code).sum()) == want, name


def test_window_longer_than_runs_and_unknown_kind_are_refused(small_store):
    runs = complete_runs(small_store)
    with pytest.raises(WindowError, match="shortest run"):
        check_windows(small_store, runs, 64, 3)
    with pytest.raises(WindowError, match="unknown parameter kind 'lstm'"):
        kind_codes(("conv", "lstm"))
    with pytest.raises(WindowError, match="no complete runs"):
        check_windows(small_store, [], 15, 3)
