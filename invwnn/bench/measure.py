"""The four unlearning metrics from one forward pass per split (``invwnn.audit.metrics.evaluate`` runs
the retain, test and forget sets through the model twice; a bench measures hundreds of models).

Same definitions and the same seeded MIA protocol as :mod:`invwnn.audit.metrics`: the SVC sees the
confidences of ``n = min(|retain|, |test|)`` retain images (members) and ``n`` test images, drawn
with ``torch.Generator().manual_seed(seed)`` in the same order. RA is measured on those same ``n``
retain images (a bench retain set can be 10x the test set), which is the only difference.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from invwnn.inputs.splits import Split
from invwnn.audit.metrics import predict
from invwnn.audit.rmia import Attack


def mia_from_confidence(member: np.ndarray, non_member: np.ndarray, forget: np.ndarray) -> float:
    """Percent of ``forget`` confidences (true-label probabilities, (n_f,)) that an
    ``SVC(C=3, gamma='auto', rbf)`` fitted on ``member`` (label 1) vs ``non_member`` (label 0)
    calls non-member."""
    from sklearn.svm import SVC

    feats = np.concatenate([member, non_member])[:, None]
    labels = np.concatenate([np.ones(len(member)), np.zeros(len(non_member))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(feats, labels)
    return 100.0 * float((clf.predict(forget[:, None]) == 0).mean())


def _probs(model: nn.Module, split: Split, device: str) -> tuple[float, np.ndarray]:
    p = predict(model, split.x, device)
    return (100.0 * (p.argmax(1) == split.y).float().mean().item(),
            p[torch.arange(len(split.y)), split.y].numpy())


def measure(model: nn.Module, forget: Split, retain: Split, test: Split, device: str = "cpu",
            seed: int = 0, extras: dict[str, Split] | None = None,
            attack: Attack | None = None) -> dict[str, float]:
    """RA, UA, TA, MIA (percent), ``acc:<name>`` for every extra split, and with ``attack`` its
    RMIA and JS figures (:meth:`invwnn.audit.rmia.Attack.figures`)."""
    n = min(len(retain), len(test))
    g = torch.Generator().manual_seed(seed)
    r_idx = torch.randperm(len(retain), generator=g)[:n]
    t_idx = torch.randperm(len(test), generator=g)[:n]
    ra, member = _probs(model, retain.subset(r_idx), device)
    ta, test_conf = _probs(model, test, device)
    fa, forget_conf = _probs(model, forget, device)
    out = {"RA": ra, "UA": 100.0 - fa, "TA": ta,
           "MIA": mia_from_confidence(member, test_conf[t_idx.numpy()], forget_conf)}
    for name, split in (extras or {}).items():
        out[f"acc:{name}"] = _probs(model, split, device)[0]
    if attack is not None:
        out.update(attack.figures(model))
    return out


GAP = ("RA", "UA", "TA", "MIA")  # the paper's gap (Table 1), with SalUn's SVC attack
GAP5 = ("RA", "TA", "UA", "RMIA_acc", "RMIA_AUC")  # ReGUn's five terms (|UA diff| = |forget acc diff|)


def gap(metrics: dict, reference: dict, terms: tuple[str, ...] = GAP) -> float:
    """Mean of |metric - reference's| over ``terms`` (the paper's four by default)."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in terms]))


def gaps(metrics: dict, reference: dict) -> dict[str, float]:
    """``gap`` (the paper's four terms) and, where both hold RMIA figures, ``gap5`` (ReGUn's five)."""
    out = {"gap": gap(metrics, reference)}
    if all(k in metrics and k in reference for k in GAP5):
        out["gap5"] = gap(metrics, reference, GAP5)
    return out
