"""Privacy against reference models: offline RMIA and the divergence to Retrain's outputs.

RMIA (Zarifzadeh et al., ICML 2024, offline variant). For an image x with label y, ``p(x)`` is the
audited model's probability of y; ``Pr(x)`` is its expected value under training that did or did not
see x, estimated from k reference models trained without x (on the retain set) as
``((1 + a) * mean_k p_k(x) + (1 - a)) / 2``: ``a`` says how much higher an IN model's probability is
than an OUT model's (``a = 0.3``, the default of the authors' privacy_meter). The score of x is the
share of population images z (held-out, never trained on) that x beats:
``[p(x) / Pr(x)] / [p(z) / Pr(z)] > gamma``. A model that still remembers its forget set scores
it above held-out images of the same classes; a model that never saw it (Retrain) scores both alike,
AUC near 50%.

The images: the test set is cut in two by a seeded permutation; one half is the population Z, the
other, kept to the forget set's classes (a forgotten class is compared with held-out images of that
class), the held-out candidates X_out. The attack tells the forget set from X_out: AUC, TPR at 1% FPR,
and the best balanced accuracy over thresholds (percent). The per-example tail: the share of forget
images scored above the 95th percentile of Retrain's own forget scores (Retrain: about 5%).
Retrain is the first reference; its own figures use the other references (leave-one-out).

Jensen-Shannon divergence (base 2, in [0, 1]) between the model's and Retrain's predictive
distributions, averaged over the forget set and over the test set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from invwnn.audit.metrics import predict
from invwnn.errors import InputError
from invwnn.inputs.splits import Split

OFFLINE_A = 0.3
REFERENCE_SEED_STEP = 1000  # reference j trains under seed + 1000 j (bench and audit alike)
GAMMA = 1.0
TAIL_QUANTILE = 0.95
FPR = 0.01


def label_probs(probs: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The probability of each image's own label: ``probs`` (n, classes), ``y`` (n,) -> (n,)."""
    return probs[torch.arange(len(y)), y].double().numpy()


def offline_prior(reference_probs: np.ndarray, a: float = OFFLINE_A) -> np.ndarray:
    """``Pr(x)`` from OUT references: ``reference_probs`` (k, n) -> (n,)."""
    return ((1 + a) * reference_probs.mean(0) + (1 - a)) / 2


def rmia_scores(p_x: np.ndarray, prior_x: np.ndarray, p_z: np.ndarray, prior_z: np.ndarray,
                gamma: float = GAMMA) -> np.ndarray:
    """Share of population images each candidate beats: candidates ``p_x``, ``prior_x`` (n,),
    population ``p_z``, ``prior_z`` (m,) -> (n,) in [0, 1]."""
    ratio_z = np.sort(p_z / prior_z)
    # x beats z when ratio_x / ratio_z > gamma, i.e. ratio_z < ratio_x / gamma
    return np.searchsorted(ratio_z, (p_x / prior_x) / gamma, side="left") / len(ratio_z)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve (percent) of telling ``positive`` scores from ``negative`` ones
    (higher = positive); ties count half."""
    neg = np.sort(negative)
    below = np.searchsorted(neg, positive, side="left")
    ties = np.searchsorted(neg, positive, side="right") - below
    return 100.0 * float((below + 0.5 * ties).mean() / len(neg))


def placements(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values: for each positive (n_p,) the share of negatives it beats, for each
    negative (n_n,) the share of positives that beat it (ties count half); each averages to the AUC."""
    neg, pos = np.sort(negative), np.sort(positive)
    v10 = (np.searchsorted(neg, positive, "left") + np.searchsorted(neg, positive, "right")) / (2 * len(neg))
    v01 = 1 - (np.searchsorted(pos, negative, "left") + np.searchsorted(pos, negative, "right")) / (2 * len(pos))
    return v10, v01


def paired_se(model: tuple[np.ndarray, np.ndarray], others: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """DeLong's standard error (percent points) of AUC(``model``) minus the mean AUC of ``others``,
    each a pair (positive scores (n_p,), negative scores (n_n,)) on the *same* images: the images'
    own luck, shared by both sides, cancels (DeLong, DeLong and Clarke-Pearson 1988)."""
    v10, v01 = placements(*model)
    rest = [placements(*o) for o in others]
    d10 = v10 - np.mean([r[0] for r in rest], 0)
    d01 = v01 - np.mean([r[1] for r in rest], 0)
    return 100.0 * float(np.sqrt(d10.var(ddof=1) / len(d10) + d01.var(ddof=1) / len(d01)))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = FPR) -> float:
    """Percent of ``positive`` above the threshold that at most ``fpr`` of ``negative`` exceed."""
    allowed = int(np.floor(fpr * len(negative) + 1e-9))  # negatives that may lie above the threshold
    threshold = np.sort(negative)[len(negative) - allowed - 1]
    return 100.0 * float((positive > threshold).mean())


def best_accuracy(positive: np.ndarray, negative: np.ndarray) -> float:
    """The best balanced accuracy (percent) over thresholds ``score > t``: 50 when indistinguishable."""
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([positive, negative]))])
    tpr = 1 - np.searchsorted(np.sort(positive), thresholds, side="right") / len(positive)
    tnr = np.searchsorted(np.sort(negative), thresholds, side="right") / len(negative)
    return 100.0 * float(((tpr + tnr) / 2).max())


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """Jensen-Shannon divergence in bits of each row of ``p`` and ``q`` (n, classes) -> (n,)."""
    p, q = p.double().clamp_min(1e-12), q.double().clamp_min(1e-12)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a / b).log2()).sum(1)  # noqa: E731
    return ((kl(p, m) + kl(q, m)) / 2).clamp_min(0).numpy()


MIN_IMAGES = 10


def attack_splits(forget: Split, test: Split, seed: int,
                  like_forget: Callable[[Split], Split] | None = None) -> tuple[Split, Split]:
    """(held-out candidates, population): ``test`` cut in two by a permutation seeded from ``seed``,
    the candidates kept to the forget set's classes, or made like the forget set by
    ``like_forget`` (for a forget set that is not a sample of clean images: mislabelled ones get
    wrong labels, triggered ones the trigger and the target label; clean held-out candidates would
    score far below such a forget set whatever the model, since no reference gives their labels
    any probability); refuses fewer than :data:`MIN_IMAGES` in either."""
    if len(forget) == 0:
        raise InputError("RMIA needs a non-empty forget set")
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 4242))
    half = len(test) // 2
    population, candidates = test.subset(perm[:half].sort().values), test.subset(perm[half:].sort().values)
    heldout = (like_forget(candidates) if like_forget is not None
               else candidates.subset(torch.isin(candidates.y, forget.y.unique()).nonzero().squeeze(1)))
    if len(population) < MIN_IMAGES or len(heldout) < MIN_IMAGES:
        raise InputError(f"RMIA needs test images: {len(population)} population and {len(heldout)} held-out "
                         f"images of the forget set's classes (at least {MIN_IMAGES} each)")
    return heldout, population


@dataclass
class _Outputs:
    forget: torch.Tensor  # (n_f, classes) probabilities
    heldout: torch.Tensor
    population: torch.Tensor
    test: torch.Tensor


class Attack:
    """Offline RMIA and JS to Retrain for one forget set. ``references``: models trained without
    the forget set (the first is Retrain); ``forget``, ``test``: the splits; ``seed`` cuts the test
    set into population and held-out candidates (``like_forget``: see :func:`attack_splits`). :meth:`figures` scores any model against them, on
    the device it is on."""

    def __init__(self, references: list[nn.Module], forget: Split, test: Split, seed: int = 0,
                 a: float = OFFLINE_A, gamma: float = GAMMA, like_forget: Callable[[Split], Split] | None = None):
        if len(references) < 2:
            raise InputError("RMIA needs at least 2 reference models (Retrain and one more)")
        heldout, population = attack_splits(forget, test, seed, like_forget)
        self.forget, self.heldout, self.population, self.test = forget, heldout, population, test
        self.a, self.gamma = a, gamma
        self.retrain_model = references[0]
        self.refs = [self._outputs(m) for m in references]
        self.retrain_scores = self._scores(self.refs[0], self.refs[1:])
        self.tail_threshold = float(np.quantile(self.retrain_scores[0], TAIL_QUANTILE))
        self.retrain = {**self._figures(*self.retrain_scores), "RMIA_tail": 100.0 * (1 - TAIL_QUANTILE),
                        "JS_forget": 0.0, "JS_test": 0.0}

    def _outputs(self, model: nn.Module) -> _Outputs:
        device = next(model.parameters()).device
        return _Outputs(*(predict(model, s.x, device) for s in (self.forget, self.heldout, self.population,
                                                                 self.test)))

    def _scores(self, target: _Outputs, refs: list[_Outputs]) -> tuple[np.ndarray, np.ndarray]:
        def probs(which: str, out: _Outputs) -> np.ndarray:
            return label_probs(getattr(out, which), getattr(self, which).y)

        prior = {w: offline_prior(np.stack([probs(w, r) for r in refs]), self.a)
                 for w in ("forget", "heldout", "population")}
        p_z, prior_z = probs("population", target), prior["population"]
        return tuple(rmia_scores(probs(w, target), prior[w], p_z, prior_z, self.gamma) for w in ("forget", "heldout"))

    @staticmethod
    def _figures(forget: np.ndarray, heldout: np.ndarray) -> dict[str, float]:
        return {"RMIA_AUC": auc(forget, heldout), "RMIA_TPR1": tpr_at_fpr(forget, heldout),
                "RMIA_acc": best_accuracy(forget, heldout)}

    def yardstick_scores(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each reference's RMIA scores of the forget images (n_f,) and held-out candidates (n_h,),
        scored against the other references: k models that never saw the forget set."""
        return [self.retrain_scores] + [self._scores(ref, self.refs[:j] + self.refs[j + 1:])
                                        for j, ref in enumerate(self.refs) if j > 0]

    def yardsticks(self) -> list[float]:
        """RMIA AUC (percent) of each reference scored against the others (k,); the first is
        :attr:`retrain`'s. Their mean is the audit's yardstick, less noisy than any one of them."""
        return [auc(*s) for s in self.yardstick_scores()]

    def paired_se(self, model: nn.Module) -> float:
        """DeLong's standard error (percent points) of ``model``'s AUC minus the yardstick's, on
        the same images (:func:`paired_se`)."""
        return paired_se(self.scores(model), self.yardstick_scores())

    def scores(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """RMIA scores in [0, 1] of the forget images (n_f,) and of the held-out candidates (n_h,)
        under ``model``; Retrain itself (the first reference, the same object) against the others."""
        if model is self.retrain_model:
            return self.retrain_scores
        return self._scores(self._outputs(model), self.refs)

    def figures(self, model: nn.Module) -> dict[str, float]:
        """RMIA_AUC, RMIA_TPR1 (TPR at 1% FPR), RMIA_acc, RMIA_tail (percent), JS_forget and
        JS_test (bits) of ``model`` against the references; Retrain itself (the first reference,
        the same object) against the others."""
        if model is self.retrain_model:
            return dict(self.retrain)
        target = self._outputs(model)
        forget, heldout = self._scores(target, self.refs)
        retrain = self.refs[0]
        return {**self._figures(forget, heldout), "RMIA_tail": 100.0 * float((forget > self.tail_threshold).mean()),
                "JS_forget": float(js_divergence(target.forget, retrain.forget).mean()),
                "JS_test": float(js_divergence(target.test, retrain.test).mean())}


__all__ = ["Attack", "attack_splits", "offline_prior", "rmia_scores", "auc", "placements", "paired_se", "tpr_at_fpr",
           "best_accuracy", "js_divergence", "label_probs", "OFFLINE_A", "GAMMA"]
