"""The guard of ``invwnn apply``: it watches one method run and, when a check fails, goes back to the
last weights that passed, halves the method's step and lets it go on within its budget (a
*backoff*); only after :data:`MAX_BACKOFFS` of them, or for a method that cannot take a smaller
step (a one-shot method), does it stop the method. Stopping, it *retreats*: it tries the weights
part of the way from the last good ones to the failing ones (:data:`RETREATS`, largest share first)
and keeps the first that passes; only when none does are the last good weights kept (the
original's when no check passed).

What a check watches:
- always: every weight and buffer finite, and the outputs on a few forget images;
- with retain (else test) images: top-1 accuracy on a seeded :data:`GUARD_IMAGES` of them stays
  within ``max_drop`` points of its value before unlearning;
- with forget images only: that the model's predictions on the forget images and on their rotated
  and flipped copies (images a trained network sorts into varied classes) do not collapse onto a
  few classes: their effective number of classes (the exponential of the entropy of the
  predicted-class histogram) stays above :data:`COLLAPSE_SHARE` of its value before unlearning.
  That is all the forget set alone can tell; the report says so.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from invwnn.audit import metrics
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods import Context
from invwnn.unlearn.methods.loop import trains

GUARD_IMAGES = 512  # images of the watched split the guard measures (a seeded subset)
GUARD_EVERY = 8  # optimizer steps between checks of step-based methods (plus steps 1, 2 and 4)
PROBE_IMAGES = 64  # forget images whose outputs must stay finite (weights can be finite and still overflow)
MAX_BACKOFFS = 3  # halvings of the step before the guard stops a method (1/8 of its step)
COLLAPSE_IMAGES = 256  # forget images (each also rotated and flipped) of the forget-only check
COLLAPSE_SHARE = 0.5  # effective predicted classes may fall to this share of their value before
# Shares of the failing move a stopped method keeps, tried in order: a one-shot method's edit (SSD's
# dampening, a negated task vector) cannot take a smaller step, but a fraction of it is one.
RETREATS = (0.5, 0.25, 0.125)


class GuardStop(Exception):
    """Raised inside a method's run by a :class:`Guard` check; :func:`invwnn.unlearn.apply.apply` catches it."""


def watch_subset(split: Split, seed: int) -> Split:
    """The images the guard measures: a seeded random :data:`GUARD_IMAGES` of ``split`` (all of a
    smaller one), in their original order."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:GUARD_IMAGES]
    return split.subset(idx.sort().values)


def finite(model: nn.Module, probe: torch.Tensor, device: str) -> bool:
    """Every floating parameter and buffer (norm statistics included) finite, and so are the
    model's output probabilities on the ``probe`` images."""
    return all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()) \
        and bool(torch.isfinite(metrics.predict(model, probe, device)).all())


def collapse_probe(forget: Split) -> torch.Tensor:
    """The first :data:`COLLAPSE_IMAGES` forget images, upside down, and (square ones) rotated a
    quarter turn: (3N, C, H, W)."""
    x = forget.x[:COLLAPSE_IMAGES]
    turned = torch.rot90(x, 1, (2, 3)) if x.shape[2] == x.shape[3] else x.flip(3)
    return torch.cat([x, x.flip(2), turned])


def effective_classes(model: nn.Module, x: torch.Tensor, device: str) -> float:
    """exp(entropy) of the histogram of predicted classes on ``x``: 1 when every image gets the
    same class, the number of classes when they spread evenly."""
    predicted = metrics.predict(model, x, device).argmax(1)
    share = torch.bincount(predicted).float() / len(predicted)
    share = share[share > 0]
    return math.exp(-(share * share.log()).sum().item())


class Guard:
    """Watches one method run on ``model`` (see the module's docstring). A check that passes keeps a
    copy of the weights; one that fails backs off (restores them and halves the step: through
    ``ctx.step_scale`` for iterative methods, in the stepping optimizer for step methods) or, past
    :data:`MAX_BACKOFFS` or in ``end`` mode, raises :class:`GuardStop`. :meth:`finish` checks the
    result and, after a stop, restores the kept weights. ``seconds``: time spent checking."""

    def __init__(self, model: nn.Module, forget: Split, split: Split | None, split_name: str | None,
                 max_drop: float | None, mode: str, device: str, seed: int, ctx: Context | None = None):
        self.model, self.max_drop, self.mode, self.device, self.ctx = model, max_drop, mode, device, ctx
        self.probe = forget.x[:PROBE_IMAGES]
        self.watched = split_name if split is not None and max_drop is not None else None
        self.subset = watch_subset(split, seed) if self.watched is not None else None
        self.reference = self.accuracy() if self.watched is not None else None
        self.collapse = None
        if self.watched is None and max_drop is not None:
            x = collapse_probe(forget)
            self.collapse = {"images": len(x), "reference": effective_classes(model, x, device), "x": x}
        self.params = {id(p) for p in model.parameters()}
        self.steps, self.checks, self.seconds = 0, 0, 0.0
        self.kept, self.kept_at = self._state(), "original"
        self.stop: dict | None = None
        self.backoffs: list[dict] = []
        self.retreat: dict | None = None

    def accuracy(self) -> float:
        """Accuracy (percent) on the watched subset."""
        return metrics.accuracy(self.model, self.subset.x, self.subset.y, self.device)

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def on_step(self, optimizer, args, kwargs) -> None:
        """Optimizer step post-hook: count the steps of the optimizers that train this model, check
        at steps 1, 2, 4 and every :data:`GUARD_EVERY`."""
        if not trains(optimizer, self.params):
            return
        self.steps += 1
        if self.steps in (1, 2, 4) or self.steps % GUARD_EVERY == 0:
            self.check({"step": self.steps}, optimizer=optimizer)

    def failure(self, acc: float | None = None) -> dict | None:
        """What is wrong with the current weights (None: nothing). ``acc``: the watched accuracy
        when the caller measured it already."""
        if not finite(self.model, self.probe, self.device):
            return {"reason": "non-finite"}
        if self.watched is not None:
            acc = self.accuracy() if acc is None else acc
            if acc < self.reference - self.max_drop:
                return {"reason": "guard", "accuracy": acc}
        if self.collapse is not None:
            classes = effective_classes(self.model, self.collapse["x"], self.device)
            if classes < COLLAPSE_SHARE * self.collapse["reference"]:
                return {"reason": "guard", "effective_classes": classes}
        return None

    def check(self, at: dict, acc: float | None = None, optimizer=None) -> None:
        """Check the current weights (``at``: where in the run, for the report); back off or stop
        on a failure (``optimizer``: the one that just stepped, for a step method's backoff)."""
        start = time.perf_counter()
        try:
            self.checks += 1
            failed = self.failure(acc)
            if failed is None:
                self.kept, self.kept_at = self._state(), at
                return
            failed["at"] = at
            can_shrink = (self.mode == "iteration" and self.ctx is not None) or \
                         (self.mode == "step" and optimizer is not None)
            if not can_shrink or len(self.backoffs) >= MAX_BACKOFFS:
                self.stop = failed
                self.retreat_to_passing()
                raise GuardStop
            self.back_off(failed, optimizer)
        finally:
            self.seconds += time.perf_counter() - start

    def back_off(self, failed: dict, optimizer) -> None:
        """Restore the kept weights and halve the step: the loop's ``ctx.step_scale`` for an
        iterative method, the learning rate of the stepping ``optimizer`` (its moments cleared) for a
        step method."""
        self.model.load_state_dict(self.kept)
        if self.mode == "iteration":
            self.ctx.step_scale *= 0.5
            scale = self.ctx.step_scale
        else:
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            scale = 0.5 ** (len(self.backoffs) + 1)
        self.backoffs.append({**failed, "kept": self.kept_at, "step_scale": scale})

    def retreat_to_passing(self) -> None:
        """The stop's last resort before the kept weights: the first of :data:`RETREATS` (a share of
        the move from the kept weights to the current, failing ones) whose weights pass a check
        becomes the kept weights; recorded in ``self.retreat``. Nothing to try after non-finite
        weights (every share of an infinite move is infinite); finite weights whose outputs
        overflowed are retreated from like any other failure."""
        failing = self._state()
        if not all(torch.isfinite(v).all() for v in failing.values() if v.is_floating_point()):
            return
        self.retreat = {"share": None, "tried": [], "from": self.kept_at, "to": self.stop["at"]}
        for share in RETREATS:
            self.retreat["tried"].append(share)
            self.model.load_state_dict({k: self.kept[k] + share * (v - self.kept[k]) if v.is_floating_point() else v
                                        for k, v in failing.items()})
            if self.failure() is None:
                self.retreat["share"] = share
                self.kept, self.kept_at = self._state(), {"retreat": share}  # a share of the failing move
                return

    def finish(self) -> None:
        """Check the method's result (unless a check already stopped it); after a stop, put the
        kept weights back."""
        if self.stop is None:
            try:
                self.check({"end": True})
            except GuardStop:
                pass
        if self.stop is not None:
            self.model.load_state_dict(self.kept)

    def describe(self) -> dict:
        """The report's ``guard`` entry."""
        out = {"max_drop": self.max_drop, "watched": self.watched, "mode": self.mode, "checks": self.checks,
               "stopped": self.stop is not None, "backoffs": self.backoffs, "max_backoffs": MAX_BACKOFFS}
        if self.watched is not None:
            out.update(images=len(self.subset), reference_acc=self.reference)
        elif self.max_drop is None:
            out["note"] = "disabled (--max-drop off): only non-finite weights or outputs stop the method"
        else:
            out["note"] = ("no --retain or --test to watch: only non-finite outputs and a collapse of the "
                           "predictions on the forget images stop the method; the damage to other images "
                           "is unknown")
            out["collapse"] = {k: v for k, v in self.collapse.items() if k != "x"}
        if self.mode == "step":
            out["every"] = GUARD_EVERY
        if self.stop is not None:
            out.update(stopped_at=self.stop["at"], kept=self.kept_at, reason=self.stop["reason"])
            if self.retreat is not None:
                out["retreat"] = self.retreat
            for key in ("accuracy", "effective_classes"):
                if key in self.stop:
                    out["acc_at_stop" if key == "accuracy" else key] = self.stop[key]
        return out
