"""Hyperparameter search with the same budget for every method, on validation data only.

Every bench method (each rewinder ablation and control on its own) gets ``trials`` configurations
from one sampler: the method's library defaults first, then seeded random draws from its search
space below (log-uniform learning rates, uniform reals, choices). Each configuration runs once on
a tuning seed that no reported result uses, on :meth:`Scenario.for_tuning` (TA and MIA measured on
the validation split, never on test images), under the bench's equal-forgetting protocol. The
choice is the configuration that reached Retrain's forgetting with the smallest gap; if none
reached it, the smallest gap at its end. Ties go to the faster one.

The record (``tuned/<scenario>.json``) holds the spaces, every trial, the choice, the data
fingerprint of the tuning seed and the seconds each method's search took; ``invwnn bench``
applies its choices by default and copies the record into ``results.json``.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Callable

from invwnn.bench import prepare as prep_mod
from invwnn.bench import runner, scenarios
from invwnn.bench.measure import gap, measure
from invwnn.bench.pool import map_units
from invwnn.methods import REGISTRY
from invwnn.models import InputError, atomic_write, versions

TRIALS = 16  # configurations per method, the same for every method, ablation and control
TUNING_SEED = 100  # reported seeds are 0, 1, 2, ...
TUNED_DIR = Path(__file__).with_name("tuned")

Param = tuple  # ("log", lo, hi) | ("uniform", lo, hi) | ("choice", [values])

_INVWNN = {"lr": ("log", 1e-5, 1e-3), "iterations": ("choice", [3, 5, 10, 20]), "every": ("choice", [1, 2])}
_INVWNN_PLUS = {"lr": ("log", 3e-4, 5e-3), "iterations": ("choice", [6, 12, 24]),
                "repair_steps": ("choice", [2, 4, 8, 16]), "repair_lr": ("log", 3e-4, 3e-3),
                "batch_size": ("choice", [64, 128])}
# The rewind's length in snapshot intervals: the linear line's horizon, and the learned rewinder's
# stretch (horizon / its trained U), so invwnn+'s learned and linear rows get the same one knob.
_HORIZON = {"horizon": ("uniform", 0.5, 4.0)}

SPACES: dict[str, dict[str, Param]] = {
    "invwnn+": {**_INVWNN_PLUS, **_HORIZON}, "invwnn+-linear": {**_INVWNN_PLUS, **_HORIZON},
    "invwnn+-reset": _INVWNN_PLUS, "invwnn+-none": _INVWNN_PLUS,
    **{f"invwnn+-{kind}": {**_INVWNN_PLUS, **_HORIZON} for kind in runner.PREDICTOR_FILES},
    "invwnn+-linear-every4": {**_INVWNN_PLUS, **_HORIZON},
    "invwnn+-linear-spacing": {**_INVWNN_PLUS, **_HORIZON, "every": ("choice", [1, 2, 4])},
    "invwnn": _INVWNN, "invwnn-linear": {**_INVWNN, **_HORIZON}, "invwnn-reset": _INVWNN, "invwnn-none": _INVWNN,
    "finetune": {"lr": ("log", 1e-3, 1e-1), "epochs": ("choice", [2.0, 5.0, 10.0])},
    "neggrad": {"lr": ("log", 1e-4, 1e-2), "epochs": ("choice", [1.0, 2.0, 5.0])},
    "neggrad+": {"lr": ("log", 1e-3, 3e-2), "alpha": ("uniform", 0.8, 0.99), "epochs": ("choice", [2.0, 5.0, 10.0])},
    "random-label": {"lr": ("log", 1e-3, 3e-2), "epochs": ("choice", [1.0, 2.0, 5.0])},
    "salun": {"lr": ("log", 3e-4, 1e-2), "sparsity": ("uniform", 0.3, 0.9), "epochs": ("choice", [2.0, 5.0, 10.0])},
    "boundary-shrink": {"lr": ("log", 1e-6, 1e-3), "epsilon": ("uniform", 0.03, 0.3),
                        "epochs": ("choice", [2.0, 5.0, 10.0])},
    "task-vector": {"alpha": ("uniform", 0.2, 3.0), "lr": ("log", 1e-3, 3e-2), "epochs": ("choice", [2.0, 5.0, 10.0])},
    "scrub": {"lr": ("log", 1e-4, 2e-3), "msteps": ("choice", [1, 2, 3]), "epochs": ("choice", [2.0, 3.0, 5.0])},
    "fisher": {"alpha": ("log", 1e-8, 1e-5)},
    "unsir": {"impair_lr": ("log", 3e-3, 5e-2), "repair_lr": ("log", 3e-3, 3e-2), "noise_steps": ("choice", [20, 40])},
    "mnemonic": {"l1": ("log", 1e-4, 1e-2), "l2": ("log", 1.0, 100.0)},
    # The 2026 yardstick's methods (issue 23): searchable (`invwnn tune --methods ...`) but not yet in
    # runner.ORDER, so `bench` and the panel leave them out until their tuning records exist.
    "ssd": {"alpha": ("log", 1.0, 100.0), "dampening": ("log", 0.1, 10.0)},
    "l1-sparse": {"lr": ("log", 1e-3, 1e-1), "l1": ("log", 1e-5, 1e-3), "epochs": ("choice", [2.0, 5.0, 10.0])},
    "amun": {"lr": ("log", 1e-3, 3e-2), "epochs": ("choice", [1.0, 2.0, 5.0, 10.0])},
    "regun": {"lr": ("log", 1e-3, 3e-2), "retain_weight": ("uniform", 0.3, 0.95),
              "epochs": ("choice", [2.0, 5.0, 10.0])},
}
assert set(runner.ORDER) <= set(SPACES), "every bench method has a search space"
# Settings a row holds fixed in every trial, the defaults' trial included: the 500-run predictor was
# trained on snapshots 4 steps apart, and the loop refuses a predictor of another spacing; its control
# is the line in the same loop.
FIXED: dict[str, dict[str, Any]] = {"invwnn+-runs500": {"every": 4}, "invwnn+-linear-every4": {"every": 4}}


def _draw(param: Param, rng: random.Random) -> Any:
    kind, *args = param
    if kind == "log":
        lo, hi = args
        return float(f"{lo * (hi / lo) ** rng.random():.3g}")
    if kind == "uniform":
        lo, hi = args
        return float(f"{lo + (hi - lo) * rng.random():.3g}")
    if kind == "choice":
        return rng.choice(args[0])
    raise AssertionError(kind)


def candidates(name: str, trials: int = TRIALS, seed: int = 0) -> list[dict]:
    """The ``trials`` configurations (config field overrides) bench method ``name`` is tried with:
    its library defaults first (written out, so a record stays true if a default changes later),
    then random draws seeded by ``(seed, name)``; each with the row's :data:`FIXED` settings."""
    if name not in SPACES:
        raise InputError(f"no search space for {name!r}")
    defaults = REGISTRY[runner.BENCH_METHODS[name][0]].config()
    rng = random.Random(int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16))
    fixed = FIXED.get(name, {})
    return [{**{k: getattr(defaults, k) for k in SPACES[name]}, **fixed}] + \
        [{**{k: _draw(p, rng) for k, p in SPACES[name].items()}, **fixed} for _ in range(trials - 1)]


def choose(rows: list[dict]) -> dict | None:
    """The chosen trial: reached Retrain's UA with the smallest gap; else the smallest gap; ties to
    the faster. None when every trial failed."""
    ok = [r for r in rows if "error" not in r]
    return min(ok, key=lambda r: (not r["reached"], round(r["gap"], 6), r["seconds"])) if ok else None


def _trial(args: tuple) -> dict:
    """One configuration of one method on the tuning view of the tuning seed (pool worker)."""
    config, cache_dir, device, seed, name, overrides = args
    prep = prep_mod.prepare_cached(config, seed, cache_dir, device, tuning=True)
    ref = _reference(config, seed, cache_dir)
    bench = runner.BenchConfig(methods=(name,), seeds=(seed,), cache_dir=cache_dir, device=device,
                               progress=False, method_overrides={name: overrides}, references=0)
    r = runner.run_method(name, prep, ref["UA"], bench, seed)
    row = {"method": name, "overrides": overrides}
    if "error" in r:
        return {**row, "error": r["error"]}
    e = r["equal"]
    return {**row, "reached": e["reached"], "gap": gap(e, ref), "budget_gap": gap(r["budget"], ref),
            "seconds": e["seconds"], "budget_seconds": r["budget"]["seconds"],
            **{k: e[k] for k in ("RA", "UA", "TA", "MIA")}}


_REFERENCES: dict[tuple, dict] = {}


def _reference(config: scenarios.ScenarioConfig, seed: int, cache_dir: str) -> dict:
    """Retrain's metrics on the tuning view of ``config``'s ``seed`` (memoised in this process)."""
    key = (config, seed, str(cache_dir))
    if key not in _REFERENCES:
        scn = prep_mod.prepare_cached(config, seed, cache_dir, tuning=True).scenario
        retrain = prep_mod.prepare_cached(config, seed, cache_dir, tuning=True).retrain
        _REFERENCES[key] = measure(retrain, scn.forget_split, scn.retain_split, scn.test, "cpu", seed, scn.extras)
    return _REFERENCES[key]


def trial_units(config: scenarios.ScenarioConfig, methods: tuple[str, ...], trials: int, seed: int,
                cache_dir: str, device: str) -> list[tuple]:
    """The pool units of a search: every candidate of every method (see :func:`candidates`)."""
    return [(config, cache_dir, device, seed, name, o) for name in methods for o in candidates(name, trials, seed)]


def make_record(config: scenarios.ScenarioConfig, methods: tuple[str, ...], trials: int, seed: int,
                rows: list[dict], cache_dir: str) -> dict:
    """The search record from every trial's row (:func:`_trial`), with each method's choice."""
    prep = prep_mod.prepare_cached(config, seed, cache_dir, tuning=True)
    record = {"scenario": config.to_dict(), "seed": seed, "trials_per_method": trials,
              "sampler": f"library defaults, then seeded random draws (random.Random(sha256('{seed}:NAME')))",
              "objective": "on the validation split: reached Retrain's UA first, then smallest gap, then time",
              "data": prep.scenario.fingerprint(), "retrain_seconds": prep.meta["retrain"]["seconds"],
              "spaces": {n: SPACES[n] for n in methods}, "methods": {},
              "versions": versions(), "date": time.strftime("%Y-%m-%d")}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        best = choose(mine)
        record["methods"][name] = {
            "trials": len(mine), "chosen": best["overrides"] if best else {},
            "chosen_trial": mine.index(best) if best else None,
            "seconds": sum(r.get("seconds", 0.0) for r in mine if "error" not in r),
            "rows": [{k: v for k, v in r.items() if k != "method"} for r in mine]}
    return record


def tune(config: scenarios.ScenarioConfig, methods: tuple[str, ...] = runner.ORDER, trials: int = TRIALS,
         seed: int = TUNING_SEED, cache_dir: str = "data/bench-cache", device: str = "cpu", jobs: int = 1,
         progress: bool = True, log: Callable[[str], None] = lambda s: None) -> dict:
    """Search every method of ``methods`` on ``config``'s tuning seed; returns the record."""
    t0 = time.time()
    prep_mod.prepare_all(config, (seed,), cache_dir, device, jobs=1, progress=progress)
    units = trial_units(config, methods, trials, seed, cache_dir, device)
    rows = map_units(_trial, units, jobs, f"tune {config.name}", progress)
    record = make_record(config, methods, trials, seed, rows, cache_dir)
    for name, m in record["methods"].items():
        best = m["rows"][m["chosen_trial"]] if m["chosen_trial"] is not None else None
        log(f"{name}: " + (f"chose {best['overrides']} (gap {best['gap']:.2f}, reached {best['reached']})"
                           if best else "every trial failed"))
    record["wall_seconds"] = time.time() - t0
    return record


def merge(old: dict, new: dict) -> dict:
    """``old`` record with ``new``'s methods (searched on the same scenario, seed, data and trial
    count) put in; each merge is listed under ``updates`` (methods, date, versions, command)."""
    same = ("scenario", "seed", "trials_per_method", "data")
    if any(old.get(k) != new.get(k) for k in same):
        raise InputError("cannot merge tuning records of different scenarios, seeds, data or trial counts")
    out = {**old, "spaces": {**old["spaces"], **new["spaces"]}, "methods": {**old["methods"], **new["methods"]}}
    out["updates"] = [*old.get("updates", []), {"methods": sorted(new["methods"]), "date": new["date"],
                                                 "versions": new["versions"], "command": new.get("command")}]
    return out


def write(record: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return path


def tuned_path(scenario: str, where: str | Path | None = None) -> Path:
    """The tuning record for ``scenario``: ``where`` is a record file, a folder of
    ``<scenario>.json`` records, or None for the packaged folder."""
    p = Path(where) if where is not None else TUNED_DIR
    return p / f"{scenario}.json" if p.is_dir() or where is None else p


def load(scenario: str, where: str | Path | None = None) -> tuple[dict[str, dict], dict | None]:
    """(bench method name -> chosen overrides, the record) for ``scenario``; ({}, None) when the
    packaged folder has no record for it. A record for another scenario is refused."""
    path = tuned_path(scenario, where)
    if not path.is_file():
        if where is None:
            return {}, None
        raise InputError(f"--tuned {where}: no tuning record {path.name}")
    try:
        record = json.loads(path.read_text())
        chosen = {name: m["chosen"] for name, m in record["methods"].items()}
        recorded = record["scenario"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--tuned {path}: not a tuning record ({type(err).__name__})") from None
    if recorded != scenario:
        raise InputError(f"--tuned {path}: tuned on {recorded}, not {scenario}")
    return chosen, {**record, "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
