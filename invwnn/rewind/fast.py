"""The learned rewind at the machine's speed: :class:`Folded`, an inference-only form of a
:class:`invwnn.rewind.predictor.Predictor` with the same outputs to float rounding, and
:class:`StillLine`, which rewinds the windows that barely moved with the line instead.

Why it is faster than ``Predictor.forward`` (figures: docs/predictor.md, "Rewind speed"):

- the differences stream reads ``x[:, 1:] - x[:, :-1] = x @ D.T``, so its first layer folds into
  the values stream's: one (K -> 2 * width) matmul on the normalised window, no difference tensor;
- the kind embedding only ever enters the head's first layer, so ``head.0.weight[:, kinds] @ emb +
  bias`` is a (n_kinds, width) table, gathered as the head matmul's bias instead of concatenated;
- blocks of :data:`BLOCK` windows keep every activation in cache (the reference runs 65,536 windows
  a call: 16 MB activations), each stream on its own contiguous activations, activations in place;
- the window is normalised in a (K, b) layout, along contiguous rows (a (K, n) history's ``.T``
  needs no copy at all), with amin and amax (``aminmax`` is 10x slower on this CPU);
- layers narrower than :data:`MIN_OUT` outputs are padded with zero units (a small predictor's
  (b, 16) @ (16, 8) runs at a fifth of (b, 16) @ (16, 16)'s FLOP rate).

The matmuls are the same shapes' products of the same weights; only their summation order differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from invwnn.rewind.rewinders import line_coefficients

BLOCK = 8192  # windows a block: activations (BLOCK, 128) float32 = 4 MB, in L2 + L3 on the bench CPU
SLOPE = 0.1  # the predictor's LeakyReLU slope (predictor._stream)
MIN_OUT = 16  # narrower layers get zero units up to this: (8192, 16) @ (16, 8) ran at 10 GFLOP/s, @ (16, 16) at 50


def mac_per_window(config) -> int:
    """Multiply-adds per window of the reference forward of a predictor ``config`` (its
    :class:`ModelConfig`): the two streams, the head; FLOPs are twice this."""
    w, k, c = config.width, config.k, config.context_dim
    stream = w * w + w * (w // 2)
    return k * w + (k - 1) * w + 2 * stream + (w + config.kind_dim + c) * w + w


class Folded:
    """Inference-only weights of a predictor ``model``, folded as the module docstring says.
    ``past(windows (n, K) float32 oldest first, kind rows (n,) long into the model's embedding,
    context (n, C) or None) -> (n,)`` past weights in weight units, the reference
    :func:`invwnn.rewind.predictor.predict_past` to float rounding."""

    def __init__(self, model):
        c = model.config
        p = {k: v.detach() for k, v in model.state_dict().items()}
        self.k, self.width, self.clip, self.eps = c.k, c.width, c.clip, c.eps
        diff = torch.zeros(c.k - 1, c.k, dtype=torch.float64)  # (K-1, K): x @ diff.T = x[:, 1:] - x[:, :-1]
        diff[:, 1:] += torch.eye(c.k - 1, dtype=torch.float64)
        diff[:, :-1] -= torch.eye(c.k - 1, dtype=torch.float64)
        first_d = (p["diffs.0.weight"].double() @ diff).to(p["diffs.0.weight"])
        # first layers: the values stream's and the folded differences stream's, each (K, w)
        self.first = [(p["values.0.weight"].T.contiguous(), p["values.0.bias"]),
                      (first_d.T.contiguous(), p["diffs.0.bias"])]
        head, half = p["head.0.weight"], c.width // 2
        pad = max(0, MIN_OUT - half)  # zero units: leaky(0) = 0 times a zero head row adds exactly 0
        self.stream = [(p[f"{s}.2.weight"].T.contiguous(), p[f"{s}.2.bias"],
                        F.pad(p[f"{s}.4.weight"].T, (0, pad)).contiguous(), F.pad(p[f"{s}.4.bias"], (0, pad)))
                       for s in ("values", "diffs")]
        self.head_v, self.head_d = (F.pad(head[:, :half].T, (0, 0, 0, pad)).contiguous(),
                                    F.pad(head[:, half:2 * half].T, (0, 0, 0, pad)).contiguous())
        kinds = p["kind.weight"] @ head[:, 2 * half:2 * half + c.kind_dim].T if c.kind_dim else \
            torch.zeros(1, c.width)
        self.kind_bias = (kinds + p["head.0.bias"]).contiguous()  # (n_kinds, w): the kind's share + bias
        self.head_c = head[:, 2 * half + c.kind_dim:].T.contiguous() if c.context_dim else None
        self.out_w, self.out_b = p["head.2.weight"][0].contiguous(), p["head.2.bias"]
        self.device = self.out_w.device

    def residual(self, x: torch.Tensor, rows: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Normalised windows (b, K) (any strides: a (K, b) block's ``.T`` costs no copy), kind rows
        (b,), context (b, C) or None -> clipped residual (b,)."""
        pre = torch.index_select(self.kind_bias, 0, rows) if self.kind_bias.shape[0] > 1 else \
            self.kind_bias.expand(x.shape[0], -1).clone()  # index_select: 6x faster than kind_bias[rows]
        for (w1, b1), (w2, b2, w3, b3), to_head in zip(self.first, self.stream, (self.head_v, self.head_d)):
            # each stream on its own contiguous activations: a column slice of a shared (b, 2w)
            # buffer makes the next matmul copy it first
            g = F.leaky_relu_(torch.addmm(b1, x, w1), SLOPE)
            g = F.leaky_relu_(torch.addmm(b2, g, w2), SLOPE)
            g = F.leaky_relu_(torch.addmm(b3, g, w3), SLOPE)
            pre = pre.to(g.dtype).addmm_(g, to_head.to(g.dtype))  # in place: no copy of the (b, w) sum
        if self.head_c is not None:
            pre = torch.addmm(pre, context.to(pre.dtype), self.head_c)
        F.leaky_relu_(pre, SLOPE)
        return torch.addmv(self.out_b.to(pre.dtype), pre, self.out_w.to(pre.dtype)).clamp_(-self.clip, self.clip)

    def past(self, windows: torch.Tensor, rows: torch.Tensor, context: torch.Tensor | None = None,
             block: int = BLOCK) -> torch.Tensor:
        """See the class docstring; blocks of ``block`` windows; ``windows`` may be a strided view
        (e.g. a (K, n) history's ``.T``): each block is made contiguous on its own."""
        out = torch.empty(windows.shape[0], dtype=torch.float32, device=windows.device)
        with torch.inference_mode():
            for a in range(0, windows.shape[0], block):
                # (K, b) layout: the min, max and normalisation run along contiguous rows (4x faster
                # than across each (b, K) row); free when ``windows`` is the loop's history.T
                src = windows[a:a + block].T
                w = torch.empty(src.shape, dtype=torch.float32, device=self.device).copy_(src)  # never the input
                lo, hi = torch.amin(w, 0), torch.amax(w, 0)  # aminmax is 10x slower on CPU
                scale = (hi - lo).add_(torch.maximum(hi.abs(), lo.abs()), alpha=self.eps)  # as normalise()
                scale = torch.where(scale > 0, scale, torch.ones_like(scale))
                offset = w[0].clone()
                x = w.sub_(offset).div_(scale)
                c = None if context is None else context[a:a + block].to(self.device)
                r = self.residual(x.T, rows[a:a + block].to(self.device), c)
                out[a:a + block] = torch.addcmul(offset, r.float(), scale).to(out.device)
        return out


@dataclass(frozen=True)
class StillLine:
    """Rewinds the windows that barely moved with the line, the rest with ``inner``: a window is
    *still* when its span (max - min) is at most ``threshold`` times the median span of the windows
    of the same call (its chunk of the loop), i.e. when its rewind can move the weight at most about
    ``clip * threshold`` median spans whatever either rewinder predicts. ``threshold`` 0: nothing
    skipped (exactly ``inner``). ``last`` records what share of the last call was skipped."""

    inner: Any
    threshold: float = 0.0
    horizon: float = 3.0
    last: dict = None

    def __post_init__(self):
        object.__setattr__(self, "last", {})

    @property
    def k(self) -> int:
        return self.inner.k

    def still(self, windows: torch.Tensor) -> torch.Tensor:
        """(n,) bool: which windows (n, K) this rewinder hands to the line."""
        span = windows.amax(1) - windows.amin(1)
        return span <= self.threshold * span.median()

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        if self.threshold <= 0:
            self.last.update(skipped=0.0)
            return self.inner.rewind(windows, kinds, layers)
        still = self.still(windows)
        out = windows @ line_coefficients(windows.shape[1], self.horizon, windows)
        moved = (~still).nonzero().squeeze(1)
        if moved.numel():
            part = None if layers is None else layers[moved]
            out[moved] = self.inner.rewind(windows[moved], None if kinds is None else kinds[moved], part)
        self.last.update(skipped=float(still.float().mean()))
        return out

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "still_line": {"threshold": self.threshold, "horizon": self.horizon}}
