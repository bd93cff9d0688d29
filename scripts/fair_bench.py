"""The protocol behind docs/results.md, for every scenario at once on one pool of workers:

1. train (or find in the cache) each scenario's original and Retrain for the tuning seed and the
   reported seeds;
2. search every method's hyperparameters on the tuning seed's validation split (`invwnn tune`'s
   units: one Optuna study per method, the same number of trials for every method, ablation and
   control) and write invwnn/bench/tuned/<scenario>.json, the trials in <scenario>.optuna.log beside it;
3. bench every method with those choices on the reported seeds (`invwnn bench`'s units, with
   Retrain re-timed in the same pool) and write results/<scenario>/.

Equivalent to `invwnn tune` then `invwnn bench` per scenario, but one pool keeps every worker busy
across scenarios. Every finished unit is appended to ``STATE/*.jsonl``, so a killed run resumes
where it stopped (same arguments).

    python scripts/fair_bench.py --jobs 16 --device cuda [--scenarios random10,class] [--trials 4]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from invwnn.bench import prepare, report, runner, scenarios, search
from invwnn.bench.pool import map_units


def _done(path: Path) -> dict[str, object]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            out[entry["key"]] = entry["result"]
    return out


def _pool(fn, keyed_units: list[tuple[str, tuple]], state: Path, jobs: int, desc: str) -> dict[str, object]:
    """Run the units not yet in ``state``; returns key -> result for all of them."""
    done = _done(state)
    todo = [(k, u) for k, u in keyed_units if k not in done]
    print(f"{desc}: {len(keyed_units) - len(todo)} done, {len(todo)} to run", file=sys.stderr, flush=True)
    with state.open("a") as log:
        def save(i: int, result) -> None:
            done[todo[i][0]] = result
            log.write(json.dumps({"key": todo[i][0], "result": result}) + "\n")
            log.flush()
        map_units(fn, [u for _, u in todo], jobs, desc, progress=True, on_result=save)
    return done


def _fingerprint(name: str, overrides: dict) -> str:
    """Hash of a method's hyperparameters and of the predictor file it reads (if any): a new choice
    or a retrained predictor is a new unit."""
    registry_name, kind = runner.BENCH_METHODS[name]
    config = runner.REGISTRY[registry_name].config.from_dict(overrides)
    path = runner.predictor_path(kind, config) if kind else None
    text = json.dumps(overrides, sort_keys=True) + (hashlib.sha256(path.read_bytes()).hexdigest() if path else "")
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _bench_key(scenario: str, unit: tuple) -> str:
    """scenario/seed/method/fingerprint (:func:`_fingerprint` of the chosen hyperparameters)."""
    _, bench, seed, name, _ = unit
    if name is None:  # Retrain, re-timed in the pool
        return f"{scenario}/{seed}/None/retrain"
    return f"{scenario}/{seed}/{name}/{_fingerprint(name, bench.method_overrides.get(name, {}))}"


def _tune(configs: dict, methods: tuple[str, ...], args, command: str) -> None:
    """Search ``methods`` in every scenario and write the records. A record of other methods already
    in --tuned-dir is kept, with these methods' searches merged in (:func:`invwnn.bench.search.merge`)."""
    tune_units = []  # key: scenario/method's study/trial count; a unit is one method's whole study
    for name, config in configs.items():
        journal = search.journal_path(args.tuned_dir / f"{name}.json")  # a killed study resumes from it
        units = search.trial_units(config, methods, args.trials, search.TUNING_SEED, args.cache_dir, args.device,
                                   journal)
        tune_units += [(f"{name}/{search.study_name(config, u[4], search.TUNING_SEED)}/{args.trials}", u)
                       for u in units]
    rows = _pool(search._study, tune_units, args.state / "tune-studies.jsonl", args.jobs, "tune")
    for name, config in configs.items():
        mine = [r for k, _ in tune_units if k.startswith(f"{name}/") for r in rows[k]]
        record = search.make_record(config, methods, args.trials, search.TUNING_SEED, mine, args.cache_dir,
                                    search.journal_path(args.tuned_dir / f"{name}.json"))
        record["command"] = command
        path = args.tuned_dir / f"{name}.json"
        if path.is_file() and set(methods) != set(runner.ORDER):
            record = search.merge(json.loads(path.read_text()), record)
        search.write(record, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # the paper-scale scenario has no validation split to tune on (scripts/paper_scale.sh benches it)
    ap.add_argument("--scenarios", default=",".join(s for s in scenarios.SCENARIOS if s != "paper"))
    ap.add_argument("--trials", type=int, default=search.TRIALS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache-dir", default="data/bench-cache")
    ap.add_argument("--state", type=Path, default=Path("data/fair-bench"))
    ap.add_argument("--tuned-dir", type=Path, default=search.TUNED_DIR)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--methods", default="all")
    ap.add_argument("--phase", choices=("all", "tune", "bench"), default="all",
                    help="tune: write the records only; bench: bench with the records in --tuned-dir")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.state.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    configs = {s: scenarios.scenario_config(s, args.quick) for s in args.scenarios.split(",")}
    seeds = tuple(range(args.seeds))
    prep_units = [(c, seed, args.cache_dir, args.device, False) for c in configs.values()
                  for seed in (search.TUNING_SEED, *seeds)]
    map_units(prepare._prepare_unit, prep_units, args.jobs, "originals + Retrain")

    methods = tuple(runner.method_names(args.methods))
    command = "python scripts/fair_bench.py " + " ".join(sys.argv[1:])
    if args.phase != "bench":
        _tune(configs, methods, args, command)
    if args.phase == "tune":
        return

    plans, bench_units = {}, []
    for name, config in configs.items():
        overrides, record = search.load(name, args.tuned_dir)
        bench = runner.BenchConfig(methods=methods, seeds=seeds, cache_dir=args.cache_dir, device=args.device,
                                   method_overrides=overrides, progress=False, jobs=args.jobs)
        seed_runs, units = runner.plan(config, bench)
        plans[name] = (bench, record, seed_runs, units)
        bench_units += [(_bench_key(name, u), u) for u in units]
    results = _pool(runner._unit, bench_units, args.state / "bench.jsonl", args.jobs, "bench")
    for name, (bench, record, seed_runs, units) in plans.items():
        res = runner.assemble(configs[name], bench, record, seed_runs, units,
                              [results[_bench_key(name, u)] for u in units])
        res["command"] = command
        res["wall_seconds"] = time.time() - t0
        report.write(res, args.results / name)
        print(f"{name}: results in {args.results / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
