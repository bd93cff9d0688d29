"""Hyperparameter search with the same budget for every row, on validation data only.

Every row gets ``trials`` configurations from one Optuna study (:func:`search_method`): the library
defaults first, then TPE over the row's space (:mod:`invwnn.bench.rows`), each trial's sampler seeded
from ``(seed, row, trial index)``. Each configuration runs once, under the equal-forgetting protocol,
on a tuning seed no reported result uses and on :meth:`Scenario.for_tuning` (TA and MIA on the
validation split, never on test images). The choice (:func:`choose`): reached Retrain's UA, then the
smallest gap, then the least time.

The record (``tuned/<scenario>.json``: spaces, every trial, the choice, the data fingerprint) is what
``invwnn bench`` applies; the trials are also in an Optuna journal beside it (``<scenario>.optuna.log``,
one study per row, named in the record), from which a rerun resumes. Records without a journal (an
older sampler's) load the same way.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from invwnn.bench import prepare as prep_mod
from invwnn.bench import rows as bench_rows
from invwnn.bench import runner, scenarios
from invwnn.bench.rows import Param, defaults
from invwnn.bench.measure import gap, measure
from invwnn.bench.pool import run_logged
from invwnn.errors import InputError
from invwnn.files import atomic_write, versions

TRIALS = 16  # configurations per method, the same for every method, ablation and control
TUNING_SEED = 100  # reported seeds are 0, 1, 2, ...
TUNED_DIR = Path(__file__).with_name("tuned")

UNREACHED = 1000.0  # added to the gap of a trial that never reached Retrain's UA (gaps are under 100 points)


def _fits(param: Param, value: Any) -> bool:
    """Whether ``value`` lies in ``param``'s space (a default may not: None is "calibrate", and a
    default outside the choices is tried as it is, though the study cannot record it as a param)."""
    kind, *args = param
    if kind == "choice":
        return value in args[0]
    return isinstance(value, (int, float)) and not isinstance(value, bool) and args[0] <= value <= args[1]


def _suggest(trial: optuna.Trial, key: str, param: Param) -> Any:
    kind, *args = param
    if kind == "log":
        return trial.suggest_float(key, args[0], args[1], log=True)
    if kind == "uniform":
        return trial.suggest_float(key, args[0], args[1])
    if kind == "choice":
        return trial.suggest_categorical(key, list(args[0]))
    raise AssertionError(kind)


def trial_seed(seed: int, name: str, index: int) -> int:
    """The seed of the TPE sampler that draws method ``name``'s ``index``-th trial: a fresh seeded
    sampler per trial, so a resumed study draws what an uninterrupted one would have."""
    return int(hashlib.sha256(f"{seed}:{name}:{index}".encode()).hexdigest()[:8], 16)


def objective_value(row: dict) -> float:
    """What the study minimises: the gap, plus :data:`UNREACHED` when the trial never reached
    Retrain's UA (so reaching comes first, as in :func:`choose`)."""
    return float(row["gap"]) + (0.0 if row["reached"] else UNREACHED)


def sampler_text(seed: int) -> str:
    return (f"optuna {optuna.__version__} TPESampler (default settings, direction minimize; objective: gap, "
            f"+{UNREACHED:g} if Retrain's UA not reached; failed trials told as failed): trial 0 the library "
            f"defaults (enqueued), trial i drawn by TPESampler(seed=int(sha256('{seed}:NAME:i').hexdigest()[:8], 16))")


def _storage(storage: str | Path | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage | None:
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(storage)))


def journal_path(record_path: str | Path) -> Path:
    """The Optuna journal beside a record: ``tuned/random10.json`` -> ``tuned/random10.optuna.log``."""
    return Path(record_path).with_suffix(".optuna.log")


def study_name(config: scenarios.ScenarioConfig, name: str, seed: int) -> str:
    """One study per scenario, method and tuning seed; its digest covers the scenario's settings
    (not where its data lies), the method's space, its defaults and the predictor file it reads (if
    any), so a changed search never resumes an old study."""
    path = bench_rows.predictor_file(name, bench_rows.config(name))
    what = [{k: v for k, v in config.to_dict().items() if k != "data_root"}, bench_rows.ROWS[name].space, defaults(name),
            hashlib.sha256(path.read_bytes()).hexdigest() if path else None]
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.name}/{name}/seed{seed}/{digest}"


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's finished trials in order: complete, or failed with a row (a trial killed mid-run
    is failed without one, and not counted)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if "row" in t.user_attrs]


def search_method(name: str, trials: int, seed: int, objective: Callable[[dict], dict],
                  storage: str | Path | optuna.storages.BaseStorage | None = None,
                  study: str | None = None) -> list[dict]:
    """Run (or resume) bench method ``name``'s study until it holds ``trials`` finished trials;
    returns their rows in order (``objective(overrides)``'s row, with ``trial``, its Optuna number).

    ``objective`` maps a configuration (config field overrides, the row's fixed settings included) to
    a row: ``reached``, ``gap`` and ``seconds``, or ``error``. Trial 0 is the library defaults
    (:func:`defaults`); the others are TPE's, each drawn by a sampler seeded with
    :func:`trial_seed`. ``storage``: an Optuna storage, a journal file, or None (in memory);
    ``study``: the study's name there [``name``]. With a storage that already holds the study, its
    finished trials are reused; a trial killed mid-run is marked failed and its configuration run
    again. One process at a time per study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fixed = bench_rows.ROWS[name].fixed
    space = {k: p for k, p in bench_rows.ROWS[name].space.items() if k not in fixed}
    base = defaults(name)
    st = optuna.create_study(study_name=study or name, storage=_storage(storage), direction="minimize",
                             sampler=optuna.samplers.TPESampler(seed=trial_seed(seed, name, 0)), load_if_exists=True)
    if not st.trials:
        st.enqueue_trial({k: base[k] for k, p in space.items() if _fits(p, base[k])}, user_attrs={"defaults": True})
    for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed run
        row = t.user_attrs.get("row")
        if row is not None:  # killed between its row and its tell
            st.tell(t.number, *((None, TrialState.FAIL) if "error" in row else (objective_value(row),)))
        else:  # killed mid-run: run its configuration again
            st.tell(t.number, state=TrialState.FAIL)
            st.enqueue_trial(t.params, user_attrs=t.user_attrs)
    done = _counted(st)
    while len(done) < trials:
        st.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, name, len(done)))
        trial = st.ask()
        if trial.user_attrs.get("defaults"):
            for k, p in space.items():
                if _fits(p, base[k]):
                    _suggest(trial, k, p)  # the enqueued default, recorded as the trial's param
            overrides = dict(base)
        else:
            overrides = {**{k: _suggest(trial, k, p) for k, p in space.items()}, **fixed}
        row = objective(overrides)
        trial.set_user_attr("row", row)
        if "error" in row:
            st.tell(trial, state=TrialState.FAIL)
        else:
            st.tell(trial, objective_value(row))
        done = _counted(st)
    return [{**t.user_attrs["row"], "trial": t.number} for t in done[:trials]]


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
        prep = prep_mod.prepare_cached(config, seed, cache_dir, tuning=True)
        scn = prep.scenario
        _REFERENCES[key] = measure(prep.retrain, scn.forget_split, scn.retain_split, scn.test, "cpu", seed, scn.extras)
    return _REFERENCES[key]


def study_unit(args: tuple) -> dict:
    """One row's whole search (pool worker): :func:`search_method` with :func:`_trial` as the
    objective; ``{"rows": trial rows}``, each carrying the row's name."""
    config, cache_dir, device, seed, name, trials, storage = args
    rows = search_method(name, trials, seed, lambda o: _trial((config, cache_dir, device, seed, name, o)),
                         storage, study_name(config, name, seed))
    return {"rows": [{**r, "method": name} for r in rows]}


def make_record(config: scenarios.ScenarioConfig, methods: tuple[str, ...], trials: int, seed: int,
                rows: list[dict], cache_dir: str, storage: str | Path | None = None) -> dict:
    """The search record from every trial's row (:func:`study_unit`), with each method's choice;
    ``storage``: the journal the studies are in (the record keeps its file name only: it lies beside
    the record) and each method's ``study``, its study's name there."""
    prep = prep_mod.prepare_cached(config, seed, cache_dir, tuning=True)
    record = {"scenario": config.to_dict(), "seed": seed, "trials_per_method": trials,
              "sampler": sampler_text(seed), "storage": None if storage is None else Path(storage).name,
              "objective": "on the validation split: reached Retrain's UA first, then smallest gap, then time",
              "data": prep.scenario.fingerprint(), "retrain_seconds": prep.meta["retrain"]["seconds"],
              "spaces": {n: bench_rows.ROWS[n].space for n in methods}, "methods": {},
              "versions": versions(), "date": time.strftime("%Y-%m-%d")}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        best = choose(mine)
        record["methods"][name] = {
            "trials": len(mine), "chosen": best["overrides"] if best else {},
            "chosen_trial": mine.index(best) if best else None,
            "seconds": sum(r.get("seconds", 0.0) for r in mine if "error" not in r),
            "rows": [{k: v for k, v in r.items() if k != "method"} for r in mine],
            "study": study_name(config, name, seed)}
    return record


def tune(configs: dict[str, scenarios.ScenarioConfig], methods: tuple[str, ...] = bench_rows.BENCH,
         trials: int = TRIALS, cache_dir: str = "data/bench-cache", device: str = "cpu", jobs: int = 1,
         progress: bool = True, log: Callable[[str], None] = lambda s: None, folder: str | Path | None = None,
         command: str | None = None, state: str | Path | None = None) -> dict[str, dict]:
    """Search every row of ``methods`` on each scenario of ``configs`` (name -> config) on the tuning
    seed, one pool of ``jobs`` processes for all (each row's trials in sequence); returns name -> its
    record. With ``folder`` (created) each scenario's studies go to and resume from a journal there and
    its record is written there as ``<scenario>.json`` with ``command`` (a search of some rows merged
    into the record already there); without, the studies are in memory. ``state``: the log finished
    studies are appended to (a killed run resumes)."""
    untunable = [s for s, config in configs.items() if not config.val_size]
    if untunable:
        raise InputError(f"{untunable[0]} has no validation split to tune on (--val-size 0)")
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    journals = {s: journal_path(tuned_path(s, folder)) for s in configs} if folder is not None else {}
    t0, seed = time.time(), TUNING_SEED
    keyed = []
    for name, config in configs.items():
        prep_mod.prepare_all(config, (seed,), cache_dir, device, jobs=1, progress=progress)
        journal = journals.get(name)
        keyed += [(f"{name}/{study_name(config, row, seed)}/{trials}",
                   (config, cache_dir, device, seed, row, trials, None if journal is None else str(journal)))
                  for row in methods]
    done = run_logged(study_unit, keyed, state, jobs, "tune", progress)
    records = {}
    for name, config in configs.items():
        mine = [r for k, _ in keyed if k.startswith(f"{name}/") for r in done[k]["rows"]]
        record = make_record(config, methods, trials, seed, mine, cache_dir, journals.get(name))
        for row, m in record["methods"].items():
            best = m["rows"][m["chosen_trial"]] if m["chosen_trial"] is not None else None
            log(f"{name} {row}: " + (f"chose {best['overrides']} (gap {best['gap']:.2f}, reached {best['reached']})"
                                     if best else "every trial failed"))
        records[name] = {**record, "wall_seconds": time.time() - t0, "command": command}
        if folder is not None:
            write(records[name], tuned_path(name, folder), merge_into_old=set(methods) != set(bench_rows.BENCH))
    return records


def merge(old: dict, new: dict) -> dict:
    """``old`` record with ``new``'s methods (searched on the same scenario, seed, data and trial
    count) put in; each merge is listed under ``updates`` (methods, date, versions, command, and the
    sampler and journal of the new search)."""
    same = ("scenario", "seed", "trials_per_method", "data")
    if any(old.get(k) != new.get(k) for k in same):
        raise InputError("cannot merge tuning records of different scenarios, seeds, data or trial counts")
    out = {**old, "spaces": {**old["spaces"], **new["spaces"]}, "methods": {**old["methods"], **new["methods"]}}
    out["updates"] = [*old.get("updates", []), {"methods": sorted(new["methods"]), "date": new["date"],
                                                 "versions": new["versions"], "command": new.get("command"),
                                                 **{k: new[k] for k in ("sampler", "storage") if k in new}}]
    return out


def write(record: dict, path: str | Path, merge_into_old: bool = False) -> Path:
    """Write ``record`` to ``path``; with ``merge_into_old`` a record already there keeps its other
    rows, this search's merged in (:func:`merge`)."""
    path = Path(path)
    if merge_into_old and path.is_file():
        record = merge(json.loads(path.read_text()), record)
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
