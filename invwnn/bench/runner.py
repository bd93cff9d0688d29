"""The equal-forgetting protocol: per seed, build the scenario, train (or load from the cache) the
original and Retrain, then run every row once (in worker processes with ``jobs > 1``), scored twice
over in one pass: at its own default budget, and stopped when its unlearning accuracy first reaches
Retrain's (the paper's protocol; :mod:`invwnn.bench.track` watches the run).

Units (one row on one seed; Retrain re-timed under the same load with ``jobs > 1``) are keyed by
scenario, seed, row and :func:`invwnn.bench.rows.fingerprint` in the resumable log
(:func:`invwnn.bench.pool.run_logged`), so several scenarios share one pool and a killed run resumes.
Originals and retrained models come from :mod:`invwnn.bench.prepare` (cached on disk); settings from
:mod:`invwnn.bench.search`'s records.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from invwnn.bench import rows, scenarios
from invwnn.bench.measure import gaps, measure
from invwnn.bench.pool import run_logged
from invwnn.bench.prepare import (CACHE_VERSION, Prepared, attack_cached, autocast, new_model, prepare_all,
                                   prepare_cached, time_retrain)
from invwnn.bench.track import Tracker, alpha_sweep, subset, warm_up
from invwnn.errors import InputError
from invwnn.inputs.models import is_finite
from invwnn.unlearn.methods import REGISTRY, Context, Data
from invwnn.audit.rmia import Attack

@dataclass(frozen=True)
class BenchConfig:
    """How to run. ``method_overrides``: row name -> config field overrides (the tuning record's
    choices); ``check_forget`` / ``check_test``: sizes of the fixed subsets the stopping checks
    measure; ``jobs``: worker processes; ``amp``: bf16 autocast for every training pass on a CUDA
    device (checks, metrics and rewinder predictions stay float32); ``predictors``: checkpoints the
    learned rows read instead of the shipped ones, each row the one whose window K is its snapshots;
    ``references``: models trained on the retain set for offline RMIA (Retrain and ``references - 1``
    more, :func:`invwnn.bench.prepare.references`; 0: none)."""

    methods: tuple[str, ...] = rows.BENCH
    seeds: tuple[int, ...] = (0, 1, 2)
    cache_dir: str = "data/bench-cache"
    device: str = "cpu"
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_forget: int = 512
    check_test: int = 256
    progress: bool = True
    jobs: int = 1
    amp: bool = False
    predictors: tuple[str, ...] = ()
    references: int = 4

    def __post_init__(self) -> None:
        if self.references == 1:
            raise InputError("--references takes 0 (no RMIA) or at least 2 (Retrain and more)")
        if self.amp and not str(self.device).startswith("cuda"):
            raise InputError(f"mixed precision (--amp) needs a CUDA --device, got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def run_method(name: str, prep: Prepared, target_ua: float, bench: BenchConfig, seed: int) -> dict:
    """Run row ``name`` on a copy of the original. Returns config, both results
    (``budget`` and ``equal``: metrics, seconds, gap), the trajectory and the stopping point, or
    ``{"error": message}`` when the method cannot run on this scenario."""
    method = REGISTRY[rows.ROWS[name].method]
    mode = method.stop  # step, iteration (after each rewind), alpha or none
    scn, device = prep.scenario, bench.device
    try:
        config = rows.config(name, bench.method_overrides.get(name, {}))
        rewinder, rewinder_desc = rows.make_rewinder(name, config, device, bench.predictors, bench.amp)
    except InputError as err:
        return {"error": str(err)}
    model = copy.deepcopy(prep.original).to(device)
    fs, rs = scn.forget_split, scn.retain_split
    tracker = Tracker(model, subset(fs, bench.check_forget, seed), subset(scn.test, bench.check_test, seed),
                      target_ua, device)
    ctx = Context(device=device, seed=seed, rewinder=rewinder,
                  rebuild=lambda: new_model(scn.config, scn.x, len(scn.classes)),
                  on_iteration=tracker.on_iteration if mode == "iteration" else None)
    data = Data(fs, scn.classes, rs, None, prep.codes)
    warm_up(model, fs, device)
    handle = register_optimizer_step_post_hook(tracker.on_step) if mode == "step" else None
    torch.manual_seed(seed)
    tracker.start()
    try:
        with autocast(device, bench.amp):
            result = method.run(model, data, config, ctx)
    except InputError as err:
        return {"error": str(err).splitlines()[0]}
    finally:
        if handle is not None:
            handle.remove()
    seconds = tracker.elapsed()
    if result is not model:
        model.load_state_dict(result.state_dict())
    if not is_finite(model):
        return {"error": "non-finite weights"}
    if mode == "step" and tracker.hit is None and tracker.steps and \
            (not tracker.trajectory or tracker.trajectory[-1].get("step") != tracker.steps):
        tracker.check(step=tracker.steps, final=True)  # the state the method ended in counts too
    if mode == "alpha":
        alpha_sweep(model, prep.original, config.alpha, tracker)
    out = {"config": config.to_dict(), "stop_mode": mode,
           "rewinder": rewinder_desc,
           "budget": _score(model, prep, bench, seed, seconds), "trajectory": tracker.trajectory,
           "optimizer_steps": tracker.steps}
    if mode == "none":
        out["equal"] = {**out["budget"], "reached": out["budget"]["UA"] >= target_ua - 1e-9, "stopped_at": None}
    elif tracker.hit is None:
        out["equal"] = {**out["budget"], "reached": False, "stopped_at": None}
    else:
        row, state = tracker.hit
        model.load_state_dict(state)
        out["equal"] = {**_score(model, prep, bench, seed, seconds if mode == "alpha" else row["seconds"]),
                        "reached": True, "stopped_at": row}
    return out


def attack_for(prep: Prepared, bench: BenchConfig) -> Attack | None:
    """The RMIA attack of ``prep`` with ``bench.references`` references; None without references
    or when the scenario's test split is too small for it (warned)."""
    if not bench.references:
        return None
    try:
        return attack_cached(prep, bench.references, bench.cache_dir, bench.device, bench.amp)
    except InputError as err:
        warnings.warn(f"no RMIA on {prep.scenario.config.name} seed {prep.scenario.seed}: {err}", stacklevel=2)
        return None


def _score(model: nn.Module, prep: Prepared, bench: BenchConfig, seed: int, seconds: float) -> dict:
    scn = prep.scenario
    m = measure(model, scn.forget_split, scn.retain_split, scn.test, str(next(model.parameters()).device), seed,
                scn.extras, attack_for(prep, bench))
    return {**m, "seconds": seconds}


def run_unit(args: tuple) -> dict:
    """One pool unit: row ``name`` on ``seed``, or with ``name`` None, Retrain timed under the same
    load as the rows (the denominator of their time ratios when ``jobs > 1``)."""
    config, bench, seed, name, target_ua = args
    if name is None:
        return {"seconds": time_retrain(config, seed, bench.cache_dir, bench.device, bench.amp)}
    return run_method(name, prepare_cached(config, seed, bench.cache_dir, amp=bench.amp), target_ua, bench, seed)


def unit_key(unit: tuple) -> str:
    """scenario/seed/row/digest: the digest covers the scenario's settings (not where its data lies),
    what the bench measures with, and :func:`invwnn.bench.rows.fingerprint` of the row's settings and
    predictor file, so a changed choice, predictor or scenario is a new unit."""
    config, bench, seed, name, _ = unit
    what = [{k: v for k, v in config.to_dict().items() if k != "data_root"}, CACHE_VERSION, bench.device,
            bench.amp, bench.references, bench.check_forget, bench.check_test,
            "retrain" if name is None else rows.fingerprint(name, bench.method_overrides.get(name, {}),
                                                            bench.predictors)]
    return f"{config.name}/{seed}/{name}/{config.key(seed, what)[:12]}"


def plan(config: scenarios.ScenarioConfig, bench: BenchConfig) -> tuple[list[dict], list[tuple]]:
    """Every seed's reference results (Original, Retrain; their models must be prepared) and the
    pool units that run the methods."""
    seed_runs, units = [], []
    for seed in bench.seeds:
        prep = prepare_cached(config, seed, bench.cache_dir, amp=bench.amp)
        scn = prep.scenario
        attack = attack_for(prep, bench)
        ref = {which: measure(model, scn.forget_split, scn.retain_split, scn.test, "cpu", seed, scn.extras, attack)
               for which, model in (("original", prep.original), ("retrain", prep.retrain))}
        seed_run = {"seed": seed, "sizes": scn.sizes(), "data": scn.fingerprint(),
                    "original": {**ref["original"], **prep.meta["original"]},
                    "retrain": {**ref["retrain"], **prep.meta["retrain"]}, "methods": {}}
        seed_run["original"].update(gaps(ref["original"], ref["retrain"]))
        seed_runs.append(seed_run)
        units += [(config, bench, seed, name, ref["retrain"]["UA"]) for name in bench.methods]
        if bench.jobs > 1:
            units.append((config, bench, seed, None, None))
    return seed_runs, units


def assemble(config: scenarios.ScenarioConfig, bench: BenchConfig, tuning: dict | None, seed_runs: list[dict],
             units: list[tuple], results: list[dict], log: Callable[[str], None] = lambda s: None) -> dict:
    """The raw results of one scenario from :func:`plan`'s output and its units' results."""
    by_seed = {r["seed"]: r for r in seed_runs}
    for (_, _, seed, name, _), r in zip(units, results):
        if name is None:
            by_seed[seed]["retrain"].update(seconds_prepare=by_seed[seed]["retrain"]["seconds"],
                                            seconds=r["seconds"], timing="pool")
    for (_, _, seed, name, _), r in zip(units, results):
        if name is None:
            continue
        ref_r = by_seed[seed]["retrain"]
        for proto in ("budget", "equal"):
            if proto in r:
                r[proto].update(gaps(r[proto], ref_r))
                r[proto]["time_ratio"] = r[proto]["seconds"] / max(ref_r["seconds"], 1e-9)
        by_seed[seed]["methods"][name] = r
        log(f"seed {seed} {name}: " + (r["error"] if "error" in r else
            f"gap {r['budget']['gap']:.2f} (budget), {r['equal']['gap']:.2f} (equal UA, reached {r['equal']['reached']})"))
    return {"scenario": config.to_dict(), "bench": bench.to_dict(), "tuning": tuning, "runs": seed_runs,
            "cache_version": CACHE_VERSION}


def run(benches: dict[str, tuple[scenarios.ScenarioConfig, BenchConfig, dict | None]],
        state: str | Path | None = None, progress: bool = True,
        log: Callable[[str], None] = lambda s: None) -> dict[str, dict]:
    """Every seed and row of every scenario of ``benches`` (name -> (scenario, bench config, the tuning
    record its overrides come from)) on one pool (the configs' largest ``jobs``); ``state``: the log
    finished units are appended to and resumed from (None: none). Returns name -> raw results
    (report.py aggregates)."""
    jobs = max(bench.jobs for _, bench, _ in benches.values())
    plans, keyed = {}, []
    for name, (config, bench, _) in benches.items():
        prepare_all(config, bench.seeds, bench.cache_dir, bench.device, jobs, progress, bench.amp)
        plans[name] = plan(config, bench)
        keyed += [(unit_key(u), u) for u in plans[name][1]]
    results = {k: {f: v for f, v in r.items() if f != "key"}
               for k, r in run_logged(run_unit, keyed, state, jobs, "bench", progress).items()}
    out = {}
    for name, (config, bench, record) in benches.items():
        seed_runs, units = plans[name]
        out[name] = assemble(config, bench, record, seed_runs, units, [results[unit_key(u)] for u in units], log)
    return out
