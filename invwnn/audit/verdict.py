"""``invwnn audit``: where a model stands against models that never saw its forget set.

Trains ``references`` models of the model's own architecture from scratch on the retain set (each
from its own seed), then runs offline RMIA (:mod:`invwnn.audit.rmia`) on the forget set against
held-out test images of the same classes. The first reference is the yardstick: scored against the
others, it shows what "never trained on the forget set" looks like on this data; the verdict says
whether the model's AUC lies within two standard errors of it.

The references' recipe: the flags, else the one the model file records (the project's own format),
else the retrain method's defaults (Adam 1e-3, batch 128, 20 epochs). The report prints each
reference's retain accuracy beside the model's, and warns when they differ by more than 10 points
(references trained much less or much more than the model make a poor yardstick).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from invwnn import files
from invwnn.audit import metrics
from invwnn.audit.rmia import REFERENCE_SEED_STEP, Attack
from invwnn.errors import InputError
from invwnn.inputs.models import LoadedModel
from invwnn.unlearn.apply import Inputs, load_inputs
from invwnn.unlearn.methods import REGISTRY, Context, Data

MISMATCH = 10.0  # points of retain accuracy between model and references that draw a warning


@dataclass(frozen=True)
class AuditConfig:
    """``references`` models (at least 2); their recipe (None: recorded in the model file, else the
    retrain method's default); ``seed`` of the first reference and of the attack's split."""

    references: int = 4
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"


def recipe(loaded: LoadedModel, config: AuditConfig):
    """The retrain config the references train with, and where it came from."""
    recorded = loaded.train_config.get("prepare", {})
    base = REGISTRY["retrain"].config()
    fields = {}
    for name in ("epochs", "lr", "batch_size"):
        given = getattr(config, name)
        fields[name] = given if given is not None else recorded.get(name, getattr(base, name))
    source = "flags and " if any(getattr(config, n) is not None for n in fields) else ""
    source += "the model file's recorded recipe" if recorded else "the retrain method's defaults"
    return REGISTRY["retrain"].config(**fields), source


def train_references(loaded: LoadedModel, data: Data, config: AuditConfig, progress: bool = False) -> list[nn.Module]:
    """``config.references`` fresh models of ``loaded``'s architecture trained on ``data.retain``."""
    rcfg, _ = recipe(loaded, config)
    out = []
    for j in tqdm(range(config.references), desc="references", disable=not progress, leave=False):
        ctx = Context(device=config.device, seed=config.seed + REFERENCE_SEED_STEP * j, rebuild=loaded.rebuild)
        out.append(REGISTRY["retrain"].run(loaded.model, data, rcfg, ctx).eval())
    return out


def standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil's standard error of an AUC (percent) from ``n_pos`` and ``n_neg`` scores."""
    a = min(max(auc / 100, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return 100 * math.sqrt(max(var, 0.0))


def verdict(model: dict, reference: dict, n_forget: int, n_heldout: int) -> str:
    """One line: the model's RMIA AUC against the reference's, within two standard errors or not."""
    se = math.hypot(standard_error(model["RMIA_AUC"], n_forget, n_heldout),
                    standard_error(reference["RMIA_AUC"], n_forget, n_heldout))
    diff = model["RMIA_AUC"] - reference["RMIA_AUC"]
    head = (f"RMIA tells the forget set from held-out images with AUC {model['RMIA_AUC']:.1f}% "
            f"(a model never trained on it: {reference['RMIA_AUC']:.1f}%, standard error {se:.1f})")
    if diff > 2 * se:
        return f"{head}: the model still carries a trace of the forget set"
    if diff < -2 * se:
        return (f"{head}: the forget set looks less familiar than unseen images, itself a sign that "
                "it was unlearned (the Streisand effect)")
    return f"{head}: indistinguishable from a model that never saw it"


def audit(inputs: Inputs, config: AuditConfig = AuditConfig(), *, report_path: str | None = None,
          progress: bool = False, warn: Callable[[str], None] | None = None) -> dict:
    """The ``invwnn audit`` command as a function: read the inputs, train the references, score the
    model; returns the report, also written atomically to ``report_path`` (default: beside the
    model, ``<name>.audit.json``)."""
    if config.references < 2:
        raise InputError("--references takes at least 2 (one is the yardstick, scored against the others)")
    loaded, data = load_inputs(inputs)
    for name in ("retain", "test"):
        data.need(name, "audit")
    if not loaded.can_rebuild:
        raise InputError(f"audit trains reference models of the model's architecture, which a {loaded.source} "
                         "file does not give: use the project's own format, safetensors with --arch "
                         "torchvision:NAME, or a pickled module with --trust-pickle")
    loaded.rebuild()  # refuses before any training if the architecture cannot be rebuilt
    model = loaded.model.to(config.device)
    rcfg, source = recipe(loaded, config)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    refs = train_references(loaded, data, config, progress)
    seconds = time.perf_counter() - t0
    attack = Attack(refs, data.forget, data.test, config.seed)
    figures = attack.figures(model)
    acc = lambda m, s: metrics.accuracy(m, s.x, s.y, config.device)  # noqa: E731
    own = {"RA": acc(model, data.retain), "TA": acc(model, data.test), "forget_acc": acc(model, data.forget)}
    ref_acc = [{"RA": acc(r, data.retain), "TA": acc(r, data.test), "forget_acc": acc(r, data.forget)} for r in refs]
    warnings = []
    mean_ra = sum(r["RA"] for r in ref_acc) / len(ref_acc)
    if abs(mean_ra - own["RA"]) > MISMATCH:
        warnings.append(f"the references reach {mean_ra:.1f}% retain accuracy, the model {own['RA']:.1f}%: "
                        "they were trained much less or more than the model, a poor yardstick; give the "
                        "model's recipe with --epochs, --lr and --batch-size")
    for text in warnings if warn is not None else ():
        warn(text)
    report = {"model": str(inputs.model), "verdict": verdict(figures, attack.retrain, len(data.forget),
                                                             len(attack.heldout)),
              "figures": figures, "reference": attack.retrain, "accuracy": own, "references": ref_acc,
              "recipe": {**rcfg.to_dict(), "from": source}, "config": asdict(config),
              "images": {"forget": len(data.forget), "heldout": len(attack.heldout),
                         "population": len(attack.population), "retain": len(data.retain)},
              "reference_seconds": seconds, "warnings": warnings, "versions": files.versions()}
    path = Path(report_path) if report_path else Path(inputs.model).with_suffix(".audit.json")
    report["plot"] = str(path.with_suffix(".png"))
    title = (f"RMIA AUC {figures['RMIA_AUC']:.1f}% (a reference: {attack.retrain['RMIA_AUC']:.1f}%): "
             + report["verdict"].rsplit("): ", 1)[-1])
    plot_scores(attack, model, title, Path(report["plot"]))
    files.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    report["report"] = str(path)
    return report


def plot_scores(attack: Attack, model: nn.Module, title: str, path: Path) -> None:
    """Histograms of the RMIA scores of the forget images and of the held-out images, under the
    model (left) and under the yardstick, a reference that never saw the forget set (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invwnn.files import save_fig

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    bins = [i / 20 for i in range(21)]
    for ax, (name, who) in zip(axes, (("the model", model), ("a reference (never saw the forget set)",
                                                             attack.retrain_model))):
        forget, heldout = attack.scores(who)
        ax.hist(heldout, bins, density=True, alpha=0.55, label=f"held-out images ({len(heldout)})")
        ax.hist(forget, bins, density=True, alpha=0.55, label=f"forget images ({len(forget)})")
        ax.set_title(name)
        ax.set_xlabel("RMIA score (share of population images beaten)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.suptitle(title, fontsize=9)
    save_fig(fig, path)


def format_audit(report: dict) -> str:
    """The audit as a few lines for the screen."""
    f, r, a = report["figures"], report["reference"], report["accuracy"]
    refs = report["references"]
    mean = lambda k: sum(x[k] for x in refs) / len(refs)  # noqa: E731
    n = report["images"]
    return "\n".join([
        f"{len(refs)} references trained on {n['retain']} retain images in {report['reference_seconds']:.0f} s "
        f"({report['recipe']['from']}: {report['recipe']['epochs']:g} epochs, lr {report['recipe']['lr']:g})",
        "                     model   reference (never saw the forget set)",
        f"RMIA AUC            {f['RMIA_AUC']:6.1f}   {r['RMIA_AUC']:6.1f}   ({n['forget']} forget vs {n['heldout']} "
        f"held-out images; 50 = chance)",
        f"TPR at 1% FPR       {f['RMIA_TPR1']:6.1f}   {r['RMIA_TPR1']:6.1f}",
        f"tail (>95th pct)    {f['RMIA_tail']:6.1f}   {r['RMIA_tail']:6.1f}",
        f"forget accuracy     {a['forget_acc']:6.1f}   {mean('forget_acc'):6.1f}",
        f"retain accuracy     {a['RA']:6.1f}   {mean('RA'):6.1f}",
        f"test accuracy       {a['TA']:6.1f}   {mean('TA'):6.1f}",
        f"JS to the reference: forget {f['JS_forget']:.3f}, test {f['JS_test']:.3f} bits",
        report["verdict"], f"report {report['report']}, score histograms {report['plot']}"])
