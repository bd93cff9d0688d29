"""``invwnn audit``: where a model stands against models that never saw its forget set.

Trains ``references`` models of the model's own architecture from scratch on the retain set (each
from its own seed), then runs offline RMIA (:mod:`invwnn.audit.rmia`) on the forget set against
held-out test images of the same classes. Each reference, scored against the others, shows what
"never trained on the forget set" looks like on this data; the mean of these leave-one-out AUCs is
the yardstick (the first reference's figures are the report's ``reference``). The verdict
(:func:`decide`) is one-sided: a trace when the model's AUC lies more than :data:`TRACE_Z` standard
errors above the yardstick; a forget set "less familiar than unseen images" only :data:`BELOW_Z`
below; thresholds measured on models trained without the forget set (docs/results/audit.md).

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


# The rule's two thresholds on z, the model's AUC minus the yardstick's over their standard error,
# set from false alarms measured on models trained without the forget set (docs/results/audit.md,
# scripts/audit_false_alarm.py). One-sided: only a forget set *more* familiar than unseen images is a
# trace; a low AUC is what models that never saw it show too, unless it is far below them.
# Hanley-McNeil treats the two AUCs as independent, but both are taken on the same images, so it
# overstates the spread of their difference: z's spread on such models was 0.31 to 0.68, never over 1.
# The one-sided 5% level (1.645) therefore bounds false alarms by 1 in 20 with room, and keeps the
# power a stricter bar would cost (the original of a forgotten class is hard to tell with few images).
TRACE_Z = 1.645
BELOW_Z = 3.0
RULE_TEXT = (f"the model's RMIA AUC against the yardstick, the mean of the references' leave-one-out AUCs "
             f"(each scored against the others); z = their difference over its standard error if the model "
             f"had never seen the forget set (the yardstick's Hanley-McNeil standard error, times the square "
             f"root of 2); \"still carries a trace\" when z > {TRACE_Z:g}, \"looks less familiar than "
             f"unseen images\" when z < -{BELOW_Z:g}, else \"no more trace than a model never trained on it\".")
KINDS = ("trace", "none", "less familiar")


@dataclass(frozen=True)
class Decision:
    """The verdict in numbers: ``auc``, the model's RMIA AUC, and ``yardstick``, the mean of the
    references' leave-one-out AUCs (percent); ``se`` the standard error of their difference and
    ``bar`` the AUC above which a trace is called (percent points); ``z`` = (auc - yardstick) / se;
    ``kind`` one of :data:`KINDS`."""

    auc: float
    yardstick: float
    se: float
    z: float
    bar: float
    kind: str


def decide(auc: float, yardsticks: list[float], n_forget: int, n_heldout: int) -> Decision:
    """The rule (:data:`RULE_TEXT`) for a model's RMIA AUC against the references' leave-one-out
    AUCs ``yardsticks`` (k,), the attack telling ``n_forget`` forget images from ``n_heldout``."""
    yard = sum(yardsticks) / len(yardsticks)
    # the standard error under "never trained on it", where both AUCs share the yardstick's
    # distribution: it does not move with the model's AUC, so the bar is one AUC and z is monotone
    se = math.sqrt(2) * standard_error(yard, n_forget, n_heldout)
    z = (auc - yard) / se
    kind = "trace" if z > TRACE_Z else "less familiar" if z < -BELOW_Z else "none"
    return Decision(auc, yard, se, z, yard + TRACE_Z * se, kind)


def verdict(decision: Decision, references: int) -> str:
    """One line: the model's AUC and the yardstick with the uncertainty of their difference, the
    verdict, and what the rule's threshold means."""
    d = decision
    head = (f"RMIA AUC {d.auc:.1f}% against {d.yardstick:.1f}% for models never trained on the forget set "
            f"(the mean of {references} references, each scored against the others): "
            f"{d.auc - d.yardstick:+.1f} ± {d.se:.1f} points, z = {d.z:+.1f}. ")
    bar = (f"a trace is called above {d.bar:.1f}% (z > {TRACE_Z:g}), which models trained without the forget "
           "set passed in under 1 audit in 20 (docs/results/audit.md)")
    if d.kind == "trace":
        return f"{head}The model still carries a trace of the forget set: {bar}."
    if d.kind == "less familiar":
        return (f"{head}The forget set looks less familiar than unseen images, far below what models never "
                f"trained on it show (z < -{BELOW_Z:g}): itself a sign that it was unlearned (the Streisand effect).")
    return (f"{head}No more trace than a model never trained on it: {bar}; a trace under "
            f"{TRACE_Z * d.se:.1f} points can hide in this margin (more forget and test images narrow it).")


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
    yardsticks = attack.yardsticks()
    decision = decide(figures["RMIA_AUC"], yardsticks, len(data.forget), len(attack.heldout))
    report = {"model": str(inputs.model), "verdict": verdict(decision, len(refs)), "decision": asdict(decision),
              "yardsticks": yardsticks, "rule": RULE_TEXT,
              "figures": figures, "reference": attack.retrain, "accuracy": own, "references": ref_acc,
              "recipe": {**rcfg.to_dict(), "from": source}, "config": asdict(config),
              "images": {"forget": len(data.forget), "heldout": len(attack.heldout),
                         "population": len(attack.population), "retain": len(data.retain)},
              "reference_seconds": seconds, "warnings": warnings, "versions": files.versions()}
    path = Path(report_path) if report_path else Path(inputs.model).with_suffix(".audit.json")
    report["plot"] = str(path.with_suffix(".png"))
    title = (f"RMIA AUC {decision.auc:.1f}% against {decision.yardstick:.1f}% for models never trained on the "
             f"forget set ({decision.auc - decision.yardstick:+.1f} ± {decision.se:.1f}): "
             + {"trace": "a trace", "none": "no more trace than them", "less familiar": "less familiar"}[decision.kind])
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
        f"yardstick AUC       {'':6}   {report['decision']['yardstick']:6.1f}   (mean of the {len(refs)} references' "
        f"AUCs, each against the others: {', '.join(f'{y:.1f}' for y in report['yardsticks'])})",
        f"forget accuracy     {a['forget_acc']:6.1f}   {mean('forget_acc'):6.1f}",
        f"retain accuracy     {a['RA']:6.1f}   {mean('RA'):6.1f}",
        f"test accuracy       {a['TA']:6.1f}   {mean('TA'):6.1f}",
        f"JS to the reference: forget {f['JS_forget']:.3f}, test {f['JS_test']:.3f} bits",
        report["verdict"], f"report {report['report']}, score histograms {report['plot']}"])
