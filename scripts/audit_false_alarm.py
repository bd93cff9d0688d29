"""Measures how often ``invwnn audit`` raises a false alarm on a model that never saw its forget set,
and how often it detects the original: the figures and the verdict thresholds of
docs/results/audit.md.

Per network (``cnn``: the bench CNN at the quick size; ``resnet18``: a stock torchvision
``resnet18(num_classes=10)`` on 2,000 Fashion-MNIST images as 3x32x32, Adam 1e-3, batch 64, 8
epochs, like scripts/user_resnet.py) and case (``random10``: a random 10%; ``class``: every image of
class 0), the bench's scenario builder draws the data (seed 0, quick sizes, no mnemonic codes); the
project's own training functions train the original (``invwnn.inputs.prepare.train``, seed 0) and a
pool of ``--pool`` models without the forget set (the retrain method, seeds 0, 1000, 2000, ...).
Each draw d takes pool model ``d % pool`` as "Retrain", the audited model, and two other pool
models (a seeded choice) as the references, as ``invwnn audit --references 2`` would train them; the
attack's population / held-out cut is seeded by d. The draw audits Retrain and the original against
the same references and records the raw figures; the verdicts are computed when the report is
written, with the rule in :mod:`invwnn.audit.verdict` (and the old two-sided rule for comparison).

Trained models are cached under ``--work`` (not committed); each finished draw is appended to
``--work/draws.jsonl`` as one JSON line, so a killed run resumes where it stopped.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/audit_false_alarm.py --network cnn --case random10
    OMP_NUM_THREADS=1 .venv/bin/python scripts/audit_false_alarm.py --doc docs/results/audit.md
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from invwnn.audit import verdict as rule
from invwnn.audit.rmia import REFERENCE_SEED_STEP, Attack
from invwnn.bench import scenarios
from invwnn.bench.prepare import new_model
from invwnn.files import atomic_write
from invwnn.inputs import prepare as original_mod
from invwnn.inputs.archs import build_torchvision, parse_arch
from invwnn.inputs.preprocess import Normalized, Preprocess
from invwnn.unlearn.methods import REGISTRY, Context, Data

TORCHVISION = "torchvision:resnet18:num_classes=10"
# network -> scenario settings: the bench's quick sizes; the ResNet with scripts/user_resnet.py's recipe
NETWORKS = {"cnn": {}, "resnet18": {"dataset": "fashion-mnist-rgb", "batch_size": 64}}
CASES = ("random10", "class")
REFERENCES = 2  # as the user ran it: --references 2
VERSION = 2  # of a draw's record; version 1 lacked the paired (DeLong) standard error


def scenario(network: str, case: str) -> scenarios.Scenario:
    """The bench's quick ``case`` scenario for ``network``, seed 0, an original without mnemonic codes."""
    return scenarios.build(scenarios.scenario_config(case, quick=True, mnemonic_mix=0.0, **NETWORKS[network]), 0)


def build_net(network: str, scn: scenarios.Scenario) -> torch.nn.Module:
    """A freshly initialised network: the bench CNN (inputs normalised by the data's statistics) or
    torchvision's stock ResNet-18 on raw [0, 1] pixels, as a user's loop feeds it."""
    if network == "cnn":
        return new_model(scn.config, scn.x, len(scn.classes))
    return Normalized(build_torchvision(parse_arch(TORCHVISION)), Preprocess(tuple(scn.x.shape[2:]), scn.x.shape[1]))


def trained(network: str, case: str, scn: scenarios.Scenario, role: str, seed: int, work: Path) -> torch.nn.Module:
    """The original (``role`` "original") or a model trained on the retain set only ("pool"),
    under ``seed``, from ``work``'s cache or trained now."""
    path = work / "models" / f"{network}-{case}-{role}-{seed}.pt"
    cfg = scn.config
    torch.manual_seed(seed)
    net = build_net(network, scn)
    if path.is_file():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval()
    t0 = time.perf_counter()
    if role == "original":
        pcfg = original_mod.PrepareConfig(dataset=cfg.dataset, epochs=cfg.epochs, lr=cfg.lr,
                                          batch_size=cfg.batch_size, seed=seed)
        original_mod.train(net, scn.x, scn.y, pcfg, None)
    else:
        rcfg = REGISTRY["retrain"].config(epochs=cfg.epochs, optimizer="adam", lr=cfg.lr, batch_size=cfg.batch_size)
        ctx = Context(seed=seed, rebuild=lambda: build_net(network, scn))
        net = REGISTRY["retrain"].run(net, Data(scn.forget_split, scn.classes, scn.retain_split), rcfg, ctx)
    print(f"{path.name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    atomic_write(path, lambda tmp: torch.save(net.state_dict(), tmp))
    return net.eval()


class Memo(torch.nn.Module):
    """``model``'s logits on ``images`` (N, C, H, W), computed once and looked up by each image's
    bytes: every draw scores the same forget and test images, only cut differently, and a ResNet's
    forward passes would otherwise cost more than its training."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the attack reads the device from a parameter
        with torch.inference_mode():
            self.table = torch.cat([model.eval()(images[i: i + 500]) for i in range(0, len(images), 500)])
        self.rows = {row.numpy().tobytes(): i for i, row in enumerate(images)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[[self.rows[row.numpy().tobytes()] for row in x]]


def draw_models(d: int, pool: int) -> tuple[int, list[int]]:
    """Draw ``d``'s audited pool model and its references (distinct pool indices)."""
    others = [i for i in range(pool) if i != d % pool]
    refs = np.random.default_rng(d).choice(others, REFERENCES, replace=False)
    return d % pool, [int(r) for r in refs]


def run(network: str, case: str, pool: int, draws: int, work: Path) -> None:
    """Append the missing draws of (network, case) to ``work/draws.jsonl``."""
    log = work / "draws.jsonl"
    done = {(u["network"], u["case"], u["draw"]) for u in read(log)}
    todo = [d for d in range(draws) if (network, case, d) not in done]
    if not todo:
        return
    scn = scenario(network, case)
    images = torch.cat([scn.forget_split.x, scn.test.x])
    models = [Memo(trained(network, case, scn, "pool", REFERENCE_SEED_STEP * i, work), images) for i in range(pool)]
    original = Memo(trained(network, case, scn, "original", 0, work), images)
    for d in todo:
        audited, refs = draw_models(d, pool)
        attack = Attack([models[r] for r in refs], scn.forget_split, scn.test, seed=d)
        unit = {"version": VERSION, "network": network, "case": case, "draw": d, "pool": pool, "audited": audited,
                "references": refs, "attack_seed": d, "n_forget": len(scn.forget_split),
                "n_heldout": len(attack.heldout), "yardsticks": attack.yardsticks(),
                "retrain": attack.figures(models[audited]), "original": attack.figures(original),
                "paired_se": {"retrain": attack.paired_se(models[audited]), "original": attack.paired_se(original)}}
        with log.open("a") as f:  # one short line per draw: an interrupted run loses at most that draw
            f.write(json.dumps(unit) + "\n")
        print(f"{network} {case} draw {d}: Retrain {unit['retrain']['RMIA_AUC']:.1f}, original "
              f"{unit['original']['RMIA_AUC']:.1f}, yardsticks {unit['yardsticks'][0]:.1f} "
              f"{unit['yardsticks'][1]:.1f}", flush=True)


def read(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    units = [json.loads(line) for line in log.read_text().splitlines() if line.strip().endswith("}")]
    return [u for u in units if u.get("version") == VERSION]  # older units lack the paired standard error


def old_rule(model: float, yard: float, n_f: int, n_h: int) -> str:
    """The rule before this measurement: two-sided, two Hanley-McNeil standard errors."""
    se = math.hypot(rule.standard_error(model, n_f, n_h), rule.standard_error(yard, n_f, n_h))
    return "trace" if model - yard > 2 * se else "less familiar" if model - yard < -2 * se else "none"


def _stats(values: list[float]) -> str:
    v = np.array(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} [{v.min():.1f}, {v.max():.1f}]"


def table(units: list[dict]) -> list[str]:
    """One row per (network, case): draws, false alarms and originals detected under the old and the
    present rule, and the spread of each AUC and of the standardised difference."""
    rows = ["| network | case | draws (pool) | forget / held-out images | false alarms, old rule | "
            "false alarms (z) | originals detected, old rule | originals detected (z) | Retrain AUC | "
            "yardstick AUC (mean of 2) | original AUC | z of Retrain | z of the original |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for net, case in _keys(units):
        us = [u for u in units if (u["network"], u["case"]) == (net, case)]
        old = {who: [old_rule(u[who]["RMIA_AUC"], u["yardsticks"][0], u["n_forget"], u["n_heldout"]) for u in us]
               for who in ("retrain", "original")}
        now = {who: [rule.decide(u[who]["RMIA_AUC"], u["yardsticks"], u["n_forget"], u["n_heldout"]) for u in us]
               for who in ("retrain", "original")}
        false_old = sum(v != "none" for v in old["retrain"])
        false_now = [v.kind for v in now["retrain"]]
        n_false = sum(k != "none" for k in false_now)
        kinds = ", ".join(f"{false_now.count(k)} {k}" for k in ("trace", "less familiar") if false_now.count(k))
        rows.append(
            f"| {net} | {case} | {len(us)} ({us[0]['pool']}) | {us[0]['n_forget']} / {us[0]['n_heldout']} | "
            f"{false_old}/{len(us)} | **{n_false}/{len(us)}**{' (' + kinds + ')' if kinds else ''} | "
            f"{sum(v == 'trace' for v in old['original'])}/{len(us)} | "
            f"**{sum(v.kind == 'trace' for v in now['original'])}/{len(us)}** | "
            f"{_stats([u['retrain']['RMIA_AUC'] for u in us])} | {_stats([np.mean(u['yardsticks']) for u in us])} | "
            f"{_stats([u['original']['RMIA_AUC'] for u in us])} | {_stats([v.z for v in now['retrain']])} | "
            f"{_stats([v.z for v in now['original']])} |")
    return rows


def spreads(units: list[dict]) -> list[str]:
    """Which standard error matches the spread of Retrain's difference to the yardstick across draws:
    the rule's (Hanley-McNeil, as if the two AUCs were independent) or DeLong's paired one (the same
    images on both sides, the models taken as fixed). A z whose spread exceeds 1 raises false alarms."""
    rows = ["| network | case | sd of Retrain's AUC - yardstick (points) | rule's se (mean) | sd of the rule's z | "
            "paired se (mean) | sd of the paired z |", "|---|---|---|---|---|---|---|"]
    for net, case in _keys(units):
        us = [u for u in units if (u["network"], u["case"]) == (net, case)]
        d = np.array([u["retrain"]["RMIA_AUC"] - np.mean(u["yardsticks"]) for u in us])
        se = np.array([rule.decide(u["retrain"]["RMIA_AUC"], u["yardsticks"], u["n_forget"], u["n_heldout"]).se
                       for u in us])
        paired = np.array([u["paired_se"]["retrain"] for u in us])
        rows.append(f"| {net} | {case} | {d.std(ddof=1):.2f} | {se.mean():.2f} | {(d / se).std(ddof=1):.2f} | "
                    f"{paired.mean():.2f} | {(d / paired).std(ddof=1):.2f} |")
    return rows


def _keys(units: list[dict]) -> list[tuple[str, str]]:
    return sorted({(u["network"], u["case"]) for u in units}, key=lambda k: (k[0] != "cnn", k[1] != "random10"))


def summary(units: list[dict]) -> list[str]:
    """Three lines for docs/results.md: false alarms and detections, all cases together and per case."""
    n = len(units)
    now = {w: [rule.decide(u[w]["RMIA_AUC"], u["yardsticks"], u["n_forget"], u["n_heldout"]).kind for u in units]
           for w in ("retrain", "original")}
    old = [old_rule(u["retrain"]["RMIA_AUC"], u["yardsticks"][0], u["n_forget"], u["n_heldout"]) for u in units]
    keys = _keys(units)

    def per(k: tuple[str, str], who: str, kind: str) -> int:
        return sum(v == kind for u, v in zip(units, now[who]) if (u["network"], u["case"]) == k)

    def size(k: tuple[str, str]) -> int:
        return sum((u["network"], u["case"]) == k for u in units)

    return [
        f"- `invwnn audit --references 2` on models trained without the forget set: "
        f"**{sum(v != 'none' for v in now['retrain'])} false alarms in {n} draws** under the present one-sided rule "
        f"(the old two-sided rule: {sum(v != 'none' for v in old)}, of them {old.count('less familiar')} "
        "\"less familiar\"); " + ", ".join(f"{a} {b} {size((a, b)) - per((a, b), 'retrain', 'none')}/{size((a, b))}"
                                          for a, b in keys) + ".",
        f"- The original is still detected in **{sum(v == 'trace' for v in now['original'])} of {n}** draws: "
        + ", ".join(f"{a} {b} {per((a, b), 'original', 'trace')}/{size((a, b))}" for a, b in keys) + ".",
        f"- Rule (`invwnn/audit/verdict.py`): trace when z > {rule.TRACE_Z:g}, \"less familiar\" only when "
        f"z < -{rule.BELOW_Z:g}, z against the mean of the references' leave-one-out AUCs "
        "([results/audit.md](results/audit.md), `scripts/audit_false_alarm.py`)."]


def write_doc(units: list[dict], path: Path, log: Path) -> None:
    """The generated part of docs/results/audit.md: the command, the rule's constants and the table."""
    text = "\n".join([
        "# `invwnn audit`: false alarms on Retrain, detections of the original",
        "",
        f"Generated by `OMP_NUM_THREADS=1 .venv/bin/python scripts/audit_false_alarm.py --doc {path}` from "
        f"`{log}` (each (network, case) filled first by `scripts/audit_false_alarm.py --network N --case C`, "
        "seeds below; this project's 2-core CPU VM, shared with three other jobs, 2026-12-07). The runs: "
        "`--network cnn --pool 10 --draws 30` and `--network resnet18 --pool 4 --draws 24`, each with "
        "`--case random10` and `--case class` (a ResNet-18 took 9 to 12 minutes to train under that load, "
        "hence its smaller pool: its 24 draws reuse 12 model triples with different held-out cuts). Not "
        "audited here: the panel's and the scaling run's Retrain models (their caches were not on this machine).",
        "",
        "Each draw audits one model trained without the forget set (\"Retrain\", pool model `d % pool`, "
        "seeds 0, 1000, 2000, ...) against two other pool models as references (`--references 2`, a "
        "seeded choice), and the original (seed 0) against the same two; the attack's population / "
        "held-out cut is seeded by the draw. A false alarm is any verdict on Retrain other than \"no "
        "more trace than a model never trained on it\"; an original detected is the verdict \"still "
        "carries a trace\". Old rule: the model's AUC more than two Hanley-McNeil standard errors from "
        "the first reference's, either side. Present rule (`invwnn/audit/verdict.py`): "
        f"{rule.RULE_TEXT}",
        "",
        "AUC and z columns: mean ± standard deviation over the draws [min, max]; z is the present rule's "
        "standardised difference.",
        "",
        *table(units), "",
        *[f"Not measured: {net} {case} (no draws in the log)." for net in NETWORKS for case in CASES
          if not any((u["network"], u["case"]) == (net, case) for u in units)], "",
        "Why this standard error: the spread of Retrain's difference to the yardstick across draws (models, "
        "references and the held-out cut all vary) against the standard error each rule would divide it by. "
        "A z spread under 1 is conservative (fewer false alarms than the nominal rate, less power); over 1 "
        "raises false alarms. DeLong's paired error leaves out the variation between trained models, which "
        "dominates when every model gives the forgotten class almost no probability.",
        "", *spreads(units), "", "Summary (for docs/results.md):", "", *summary(units), ""])
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=tuple(NETWORKS))
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--pool", type=int, default=10, help="models trained without the forget set")
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("results/audit-false-alarm"))
    parser.add_argument("--doc", type=Path, help="write this report from the draws so far instead")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.doc:
        write_doc(read(args.work / "draws.jsonl"), args.doc, args.work / "draws.jsonl")
        return
    if args.network is None or args.case is None or args.pool < REFERENCES + 1:
        parser.error(f"--network and --case are needed, and --pool of at least {REFERENCES + 1}")
    run(args.network, args.case, args.pool, args.draws, args.work)


if __name__ == "__main__":
    main()
