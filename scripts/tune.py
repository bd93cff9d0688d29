"""Choose the tuned methods' hyperparameters fairly and record the choice.

Every tuned method gets the same search budget (GRID_SIZE configurations from a grid fixed in this
file), each run once on a tuning seed that no reported result uses. The choice is the configuration
with the smallest gap to Retrain at equal forgetting (the bench's main protocol); ties go to the
faster one. The result is written to invwnn/bench/tuned.json, which `invwnn bench` applies by
default, with every trial, the command and the versions.

    python scripts/tune.py [--scenario random10] [--seed 100] [--width 16] [--quick]
    python scripts/tune.py --try 'invwnn+-linear={"horizon": 2}' ...   # evaluate, print, write nothing
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from invwnn.bench import runner, scenarios
from invwnn.bench.measure import gap, measure
from invwnn.models import atomic_write, versions
from trajgen import data as datasets

GRID_SIZE = 8


def grid(**axes) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


GRIDS = {
    "invwnn+": grid(lr=[1e-3, 2e-3], repair_steps=[4, 8], batch_size=[64, 128]),
    "neggrad+": grid(lr=[0.003, 0.01], alpha=[0.9, 0.95], epochs=[5.0, 10.0]),
    "salun": grid(lr=[0.001, 0.003], sparsity=[0.5, 0.8], epochs=[5.0, 10.0]),
    "scrub": grid(lr=[2e-4, 5e-4], msteps=[1, 2], epochs=[3.0, 5.0]),
}
FIXED: dict[str, dict] = {}
assert all(len(g) == GRID_SIZE for g in GRIDS.values()), "every tuned method gets the same budget"


def trial(name: str, overrides: dict, prep: runner.Prepared, ref: dict, seed: int) -> dict:
    """Run bench method ``name`` with ``overrides`` once; its gap to Retrain (``ref``) at equal UA
    and at its budget, and its time."""
    bench = runner.BenchConfig(methods=(name,), seeds=(seed,), progress=False, method_overrides={name: overrides})
    r = runner.run_method(name, prep, ref["UA"], bench, seed)
    row = {"method": name, "overrides": overrides}
    if "error" in r:
        row["error"] = r["error"]
    else:
        e = r["equal"]
        row.update(gap=gap(e, ref), reached=e["reached"], seconds=e["seconds"],
                   time_ratio=e["seconds"] / prep.meta["retrain"]["seconds"], budget_gap=gap(r["budget"], ref),
                   **{k: e[k] for k in ("RA", "UA", "TA", "MIA")})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="random10")
    ap.add_argument("--seed", type=int, default=100, help="tuning seed (reported seeds are 0, 1, 2)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--methods", default=",".join(GRIDS))
    ap.add_argument("--out", default=str(Path(runner.__file__).with_name("tuned.json")))
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME=JSON",
                    help="evaluate bench method NAME with these overrides instead of tuning (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = scenarios.scenario_config(args.scenario, args.quick, width=args.width)
    scn = scenarios.build(config, args.seed, datasets.load(config.dataset))
    prep = runner.prepare(scn, "data/bench-cache", progress=True)
    ref = measure(prep.retrain, scn.forget_split, scn.retain_split, scn.test, "cpu", args.seed, scn.extras)
    if args.tries:
        for spec in args.tries:
            name, _, overrides = spec.partition("=")
            print(json.dumps(trial(name, json.loads(overrides or "{}"), prep, ref, args.seed)), flush=True)
        return
    trials, chosen = [], {}
    for method in args.methods.split(","):
        rows = []
        for overrides in GRIDS[method]:
            rows.append(trial(method, {**FIXED.get(method, {}), **overrides}, prep, ref, args.seed))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        trials += rows
        best = min((r for r in rows if "error" not in r), key=lambda r: (r["gap"], r["seconds"]))
        chosen[method] = best["overrides"]
    result = {"command": "python scripts/tune.py " + " ".join(sys.argv[1:]), "scenario": config.to_dict(),
              "seed": args.seed, "criterion": "smallest gap to Retrain at equal UA, then least time",
              "grid_size": GRID_SIZE, "grids": GRIDS, "fixed": FIXED, "chosen": chosen, "trials": trials,
              "retrain_seconds": prep.meta["retrain"]["seconds"], "versions": versions(),
              "date": time.strftime("%Y-%m-%d")}
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print(json.dumps(chosen, indent=2))


if __name__ == "__main__":
    main()
