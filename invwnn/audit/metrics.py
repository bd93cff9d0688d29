"""Unlearning metrics as in SalUn / Unlearn-Sparse (BRIEF section 5), all in percent.

RA = accuracy on the retain set, UA = 100 - accuracy on the forget set, TA = accuracy on the test
set, MIA = MIA-efficacy: the share of forget samples that a membership classifier calls non-member.
The classifier is ``SVC(C=3, gamma='auto', kernel='rbf')`` on one feature, the softmax probability of
the true label, fitted on ``|test|`` retain samples (members, 1) against the test set (non-members, 0).
``gap`` is the mean absolute difference of the four metrics to a reference (usually Retrain).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

METRICS = ("RA", "UA", "TA", "MIA")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu",
            batch_size: int = 1000) -> torch.Tensor:
    """Softmax probabilities ``(N, n_classes)`` of ``model`` on float images ``x`` (N, C, H, W),
    computed in eval mode; every module's own mode is restored afterwards (a fine-tuning loop may
    hold norm layers in eval mode while the rest trains)."""
    modes = [m.training for m in model.modules()]
    set_mode(model, False)
    out = [torch.softmax(model(x[i: i + batch_size].to(device)).float(), 1).cpu()
           for i in range(0, len(x), batch_size)]
    for module, mode in zip(model.modules(), modes):
        module.training = mode
    return torch.cat(out) if out else torch.empty(0, 0)


def set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, tolerating exported graphs, which cannot switch modes."""
    try:
        model.train(training)
    except NotImplementedError:
        pass


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device="cpu") -> float:
    """Top-1 accuracy in percent."""
    if len(y) == 0:
        return float("nan")
    return 100.0 * (predict(model, x, device).argmax(1) == y).float().mean().item()


def confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device="cpu") -> np.ndarray:
    """Probability of the true label per sample, ``(N,)``."""
    p = predict(model, x, device)
    return p[torch.arange(len(y)), y].numpy()


def mia_efficacy(model: nn.Module, retain, test, forget, device="cpu", seed: int = 0) -> float:
    """Share (percent) of ``forget`` predicted non-member by the SVC described in the module doc.
    ``retain``, ``test``, ``forget`` are :class:`invwnn.inputs.splits.Split`-like (x, y). When the retain
    set is smaller than the test set, both are cut to the same size so the classes stay balanced."""
    from sklearn.svm import SVC

    n = min(len(retain.y), len(test.y))
    g = torch.Generator().manual_seed(seed)
    r_idx = torch.randperm(len(retain.y), generator=g)[:n]
    t_idx = torch.randperm(len(test.y), generator=g)[:n]
    members = confidence(model, retain.x[r_idx], retain.y[r_idx], device)
    non_members = confidence(model, test.x[t_idx], test.y[t_idx], device)
    feats = np.concatenate([members, non_members])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(feats, labels)
    pred = clf.predict(confidence(model, forget.x, forget.y, device)[:, None])
    return 100.0 * float((pred == 0).mean())


def evaluate(model: nn.Module, forget, retain=None, test=None, device="cpu", seed: int = 0) -> dict:
    """UA always; RA and TA when those sets are given; MIA when retain and test both are."""
    out = {"UA": 100.0 - accuracy(model, forget.x, forget.y, device)}
    if retain is not None:
        out["RA"] = accuracy(model, retain.x, retain.y, device)
    if test is not None:
        out["TA"] = accuracy(model, test.x, test.y, device)
    if retain is not None and test is not None:
        out["MIA"] = mia_efficacy(model, retain, test, forget, device, seed)
    return out


def gap(metrics: dict, reference: dict) -> float:
    """Mean absolute difference over the metrics both dicts hold (SalUn's "Avg. Gap")."""
    keys = [k for k in METRICS if k in metrics and k in reference]
    return float(np.mean([abs(metrics[k] - reference[k]) for k in keys])) if keys else float("nan")
