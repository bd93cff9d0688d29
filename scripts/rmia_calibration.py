"""Is the bench's RMIA calibrated? For every bench scenario and seed: offline RMIA of the Original and of
Retrain (scored against the other references) on the forget set against held-out test images of its
classes, with 4 references (Retrain and 3 more trained like it, cached beside it); issue 23's check
that Retrain's own AUC is near 50%, and how much the Original gives away before any unlearning.

    .venv/bin/python scripts/rmia_calibration.py [--seeds 3] [--references 4] [--scenarios random10,class]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from invwnn.bench import prepare, scenarios

FIGURES = ("RMIA_AUC", "RMIA_TPR1", "RMIA_acc", "RMIA_tail", "JS_forget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--scenarios", default=",".join(scenarios.TUNABLE))
    parser.add_argument("--cache-dir", default="data/bench-cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    print(f"offline RMIA with {args.references} references (Retrain first), seeds 0-{args.seeds - 1}; "
          "mean ± std over seeds, percent\n")
    print("| scenario | model | RMIA AUC | TPR at 1% FPR | RMIA accuracy | tail (> Retrain's 95th pct) | JS forget (bits) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.scenarios.split(","):
        config = scenarios.scenario_config(name)
        rows = {"Original": [], "Retrain": []}
        for seed in range(args.seeds):
            prep = prepare.prepare_cached(config, seed, args.cache_dir)
            attack = prepare.attack_cached(prep, args.references, args.cache_dir)
            rows["Original"].append(attack.figures(prep.original))
            rows["Retrain"].append(attack.figures(prep.retrain))
        for model, figs in rows.items():
            cells = []
            for k in FIGURES:
                v = np.array([f[k] for f in figs])
                digits = 3 if k.startswith("JS") else 1
                cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}")
            print(f"| {name} | {model} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
