"""Where a model retrained without the forget set (Retrain) would stand on it: the forget accuracy
(percent) at which invwnn and invwnn+ stop when no ``--target-forget-acc`` is given.

Retrain never saw the forget images, so to it they are held-out images. What it gets right on them
depends on what they are, and the estimate asks the data, in this order:
- **absent classes**: the retain set holds none of the forget set's classes: Retrain predicts
  them for no image, 0.
- **held-out**: with test images of the forget set's classes, the original's accuracy on them
  (per class, weighted by the forget set's class counts) is Retrain's on a *sample* of the
  training data. Forget images whose labels the rest of the data does not teach (mislabelled,
  triggered) are no such sample, so that accuracy is scaled by how well the forget labels agree with
  their nearest labelled images (a k-nearest-neighbour vote), against how well held-out images' labels agree
  (:func:`label_agreement`; nearest by pixel cosine, so nothing the model memorised enters). A
  random sample agrees as well as held-out images do (factor about 1); mislabelled or triggered
  images rarely do (factor near the chance of the wrong label).
- **neighbours**: forget data only, or no test images of its classes: the share of the forget
  images' shifted copies that the original still gives the forget label
  (:func:`neighbours`): a prediction held only by memorising
  an image rarely survives the shift.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

import torch.nn.functional as F

from invwnn.audit.metrics import predict
from invwnn.errors import InputError
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Data

QUERIES = 2000  # forget (and held-out) images whose label agreement is measured (a seeded sample)
REFERENCES = 20000  # labelled images they are matched against (a seeded sample)
NEAREST = 10  # nearest labelled images whose plurality vote is checked against a query's label
# Test error grows as (images trained on) ** -0.4 when a model trains on fewer: the middle of the
# 0.3-0.5 that image classifiers' learning curves show; the bench CNN's random50 gives 0.38 (seed 0).
LEARNING_CURVE = 0.4
NEIGHBOUR_BYTES = 1 << 28  # the neighbour images held at once (float32): 21k at 3x32x32


@dataclass(frozen=True)
class Estimate:
    """Retrain's forget accuracy ``forget_acc`` (percent), how it was found (``source``: target,
    absent-classes, held-out, neighbours) and from what (``detail``: the figures behind it)."""

    forget_acc: float
    source: str
    detail: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for the report."""
        d = self.detail
        if self.source == "target":
            why = "given by --target-forget-acc"
        elif self.source == "absent-classes":
            why = "the retain set holds none of the forget set's classes, so Retrain predicts them for no image"
        elif self.source == "held-out":
            why = (f"the original's accuracy on {d['test_images']} test images of the forget set's classes, "
                   f"{d['held_out_acc']:.1f}% (carried to the retain set's size), times how well the forget labels agree with their nearest "
                   f"{d['reference']} images against how well test labels do ({d['forget_agreement']:.1f}% / "
                   f"{d['test_agreement']:.1f}%, factor {d['factor']:.2f})")
        else:
            why = (f"the share of {d['images']} shifted copies of the forget images the original still gives "
                   "the forget label (no test images of the forget set's classes to go by)")
        return f"estimated Retrain's forget accuracy: {self.forget_acc:.1f}% ({why})"


def _sample(split: Split, n: int, g: torch.Generator) -> Split:
    return split if len(split) <= n else split.subset(torch.randperm(len(split), generator=g)[:n])


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) -> (N, C*H*W), each centred and scaled to unit length (cosine)."""
    flat = x.reshape(len(x), -1).float()
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


def label_agreement(queries: Split, reference: Split, self_index: torch.Tensor | None = None,
                    k: int = NEAREST) -> float:
    """Percent of the queries whose ``k`` nearest ``reference`` images (pixel cosine) vote, by
    plurality, for the query's own label. ``self_index`` (len(queries),): each query's own position
    in ``reference``, skipped (queries drawn from the reference itself)."""
    ref = _unit_rows(reference.x)
    k = min(k, ref.shape[0] - (self_index is not None))
    n_classes = int(max(reference.y.max(), queries.y.max())) + 1
    hits = 0
    for i in range(0, len(queries), 512):
        sim = _unit_rows(queries.x[i: i + 512]) @ ref.T
        if self_index is not None:
            sim[torch.arange(sim.shape[0]), self_index[i: i + 512]] = -2.0
        votes = F.one_hot(reference.y[sim.topk(k, dim=1).indices], n_classes).sum(1)
        hits += int((votes.argmax(1) == queries.y[i: i + 512]).sum())
    return 100.0 * hits / len(queries)


def fewer_images(acc: float, trained: int, retained: int) -> float:
    """Accuracy (percent) ``acc`` of a model trained on ``trained`` images, carried to one trained on
    ``retained`` of them: error grows as (trained / retained) ** :data:`LEARNING_CURVE`."""
    return 100.0 - (100.0 - acc) * (trained / max(retained, 1)) ** LEARNING_CURVE


def held_out(model: nn.Module, forget: Split, test: Split, retain: Split | None, device: str,
             g: torch.Generator) -> Estimate | None:
    """The held-out estimate (see the module's docstring); None when ``test`` holds none of the
    forget set's classes. Labels are matched against the ``retain`` images (None: the test images,
    each query leaving itself out)."""
    counts = torch.bincount(forget.y)
    in_test = torch.isin(test.y, counts.nonzero().squeeze(1)).nonzero().squeeze(1)
    if not len(in_test):
        return None
    y = test.y[in_test]
    right = (predict(model, test.x[in_test], device).argmax(1).cpu() == y).float()
    seen = torch.bincount(y, minlength=len(counts)).float()
    per_class = torch.zeros(len(counts)).index_add_(0, y, right) / seen.clamp_min(1)
    per_class = torch.where(seen > 0, per_class, right.mean())  # a class with no test image: all of them
    held = 100.0 * (per_class * counts.float()).sum().item() / len(forget)
    if retain is not None:  # Retrain learns from the retain images only
        held = fewer_images(held, len(retain) + len(forget), len(retain))
    q_idx = in_test if len(in_test) <= QUERIES else in_test[torch.randperm(len(in_test), generator=g)[:QUERIES]]
    if retain is None:
        ref, name = test, "test"
        t_agree = label_agreement(test.subset(q_idx), test, self_index=q_idx)
    else:
        ref, name = _sample(retain, REFERENCES, g), "retain"
        t_agree = label_agreement(test.subset(q_idx), ref)
    queries = _sample(forget, QUERIES, g)
    f_agree = label_agreement(queries, ref)
    # a few forget images agree less than held-out ones by chance: only a shortfall beyond two
    # standard errors of their share says their labels are not what the data teaches
    margin = 2 * 100.0 * (max(f_agree, 1.0) / 100 * (1 - f_agree / 100) / len(queries)) ** 0.5
    factor = f_agree / max(t_agree, 1e-6) if f_agree + margin < t_agree else 1.0
    return Estimate(held * factor, "held-out", {
        "held_out_acc": held, "test_images": len(in_test), "forget_agreement": f_agree,
        "test_agreement": t_agree, "factor": factor, "reference": f"{len(ref)} {name}"})


def shifted(x: torch.Tensor, source: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Copies of images ``x`` (N, C, H, W): copy ``i`` is ``x[source[i]]`` moved by (``dy[i]``,
    ``dx[i]``) pixels in [-pad, pad], zero filled; (M, C, H, W) for M = len(source)."""
    h, w = x.shape[2:]
    padded = F.pad(x, (pad, pad, pad, pad))  # padded once per image, not per copy
    return torch.stack([padded[j, :, pad + a: pad + a + h, pad + b: pad + b + w]
                        for j, a, b in zip(source.tolist(), dy.tolist(), dx.tolist())])


def neighbours(model: nn.Module, forget: Split, copies: int, shift: float, g: torch.Generator,
               device: str) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """A stand-in for retain data built from the forget set alone: ``copies`` copies of each forget
    image, each shifted by up to ``shift`` of the image side (at least one pixel, never zero),
    labelled with ``model``'s prediction on the copy (call it before unlearning). A prediction that
    holds only because the image was memorised rarely survives the shift; one the model has learnt
    in general does. At most :data:`NEIGHBOUR_BYTES` of images (a seeded sample of the copies).
    Returns the split, each copy's index into ``forget``, and which copies are *near*: shifted at
    most half as far (rounded up)."""
    if copies < 1 or not 0 <= shift < 0.5:
        raise InputError("--neighbour-copies must be >= 1 and --neighbour-shift in [0, 0.5)")
    total, most = len(forget) * copies, max(1, NEIGHBOUR_BYTES // (forget.x[0].numel() * 4))
    source = (torch.arange(total) if total <= most else torch.randperm(total, generator=g)[:most]) % len(forget)
    pad = max(1, round(shift * max(forget.x.shape[2:])))
    grid = torch.cartesian_prod(torch.arange(-pad, pad + 1), torch.arange(-pad, pad + 1))
    offsets = grid[(grid != 0).any(1)][torch.randint(len(grid) - 1, (len(source),), generator=g)]
    x = shifted(forget.x, source, offsets[:, 0], offsets[:, 1], pad)
    y = predict(model, x, device).argmax(1)
    near = offsets.abs().amax(1) <= (pad + 1) // 2
    return Split(x, y, f"shifted copies of {forget.source}"), source, near


def kept_label(split: Split, source: torch.Tensor, near: torch.Tensor, forget: Split) -> float:
    """Percent of the near copies in ``split`` (all of them when none is near: a tiny sample) whose
    label is their forget image's."""
    keeps = (split.y == forget.y[source])[near if near.any() else slice(None)]
    return 100.0 * keeps.float().mean().item()


def estimate(model: nn.Module, data: Data, target: float | None, device: str, g: torch.Generator,
             copies: int = 4, shift: float = 0.07) -> Estimate:
    """Retrain's forget accuracy on ``data.forget`` for ``model`` before unlearning (see the
    module's docstring); ``target``: the user's, taken as given. ``copies``, ``shift``: the
    neighbours' (:func:`neighbours`)."""
    if target is not None:
        return Estimate(float(target), "target", {})
    retain = data.retain if data.retain is not None and len(data.retain) else None
    if retain is not None and not set(data.forget_classes()) & set(retain.y.unique().tolist()):
        return Estimate(0.0, "absent-classes", {})
    if data.test is not None and len(data.test):
        found = held_out(model, data.forget, data.test, retain, device, g)
        if found is not None:
            return found
    split, source, near = neighbours(model, data.forget, copies, shift, g, device)
    return Estimate(kept_label(split, source, near, data.forget), "neighbours", {"images": len(split)})
