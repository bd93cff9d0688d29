"""Writes docs/results/panel-targets.md from a panel's units (docs/results/panel-units.jsonl).

The panel's targets: per network and scenario, how far each method moved forget error toward
Retrain's ((UA - Original's) / (Retrain's - Original's); 1 = all the way), test accuracy against the
original's in the targets' reading (class: on the other classes' test images,
at most 1 point lower; label-noise: at or above; random10: at most 1 point lower), and time and
wall time over Retrain's training time.

With ``--pairs A:B,...`` it prints instead, per pair, the gap to Retrain of row A and row B in
every cell both ran, and per network their mean over its scenarios (the meta-trained rewinder
against the line: ``invwnn+-meta:invwnn+-linear,invwnn-meta:invwnn-linear``).

With ``--best`` it prints, per network, the mean gap of each of ``--methods`` over the cells where
all of them ran at their defaults, and which is smallest. With ``--gap5``
the five-term gap instead, from the rows run with reference models (``--references``); a row run
without them counts by a lower bound, its three accuracy terms over five (the two RMIA terms are at
least 0), printed ">= x": the smallest is named only where its own figure is exact (else "undecided").

    .venv/bin/python scripts/panel_targets.py results/panel-quick/units.jsonl [--methods invwnn+,invwnn]
"""
from __future__ import annotations

import argparse
import json


def budget_passes(config: dict, sizes: dict) -> int:
    """Images an invwnn / invwnn+ run at ``config`` feeds forward and backward over its whole
    budget (forget steps, then repair steps; calibration probes, rewinds and checks left out): a
    count that does not depend on the machine or its load."""
    steps = (config["snapshots"] - 1) * config["every"] + config.get("warmup", 0)  # older rows record warm-up steps
    forget = config["iterations"] * steps * min(config["batch_size"], sizes["forget"])
    repair = config["iterations"] * config.get("repair_steps", 0) * min(config.get("repair_batch_size", 0),
                                                                        sizes["retain"])
    return forget + repair


def passes(row: dict, sizes: dict) -> str:
    """The budget's image passes over Retrain's, for the invwnn loops ("-" for other methods)."""
    if "snapshots" not in row["config"]:
        return "-"
    return f"{budget_passes(row['config'], sizes) / retrain_passes(row, sizes):.2f}"


def retrain_passes(row: dict, sizes: dict) -> float:
    """Images Retrain feeds through: the retain set times the panel network's epochs."""
    from invwnn.bench.panel import NETWORKS, QUICK_NETWORKS
    net = NETWORKS.get(row["network"]) if sizes["train"] == NETWORKS[row["network"]].train_size \
        else QUICK_NETWORKS[row["network"]]
    return sizes["retain"] * net.epochs


def default_gaps(rows: list[dict]) -> dict[tuple, float]:
    """(method, network, scenario, seed) -> gap to Retrain of every row run at its defaults."""
    return {(r["method"], r["network"], r["scenario"], r["seed"]): r["gap"] for r in rows
            if "gap" in r and "defaults" in r["settings"] and "gap5" not in r}  # the plain panel's run


def default_gap5s(rows: list[dict]) -> dict[tuple, tuple[float, bool]]:
    """(method, network, scenario, seed) -> (five-term gap, whether it is only a lower bound) of every
    row run at its defaults: the row's gap5 where it was run with reference models, else the three
    accuracy terms' share of it, |RA|, |TA|, |UA - Retrain's| over 5."""
    # each row against the Retrain of its own run: with and without RMIA the originals may differ
    retrain = {(r["network"], r["scenario"], r["seed"], "gap5" in r["original"]): r["retrain"]
               for r in rows if r.get("method") is None}
    out: dict[tuple, tuple[float, bool]] = {}
    for r in rows:
        if "gap" not in r or "defaults" not in r["settings"]:
            continue
        key = (r["method"], r["network"], r["scenario"], r["seed"])
        if "gap5" in r:
            out[key] = (r["gap5"], False)
        elif key not in out or out[key][1]:
            ref = retrain[(*key[1:], False)]
            out[key] = (sum(abs(r[k] - ref[k]) for k in ("RA", "TA", "UA")) / 5, True)
    return out


def best(rows: list[dict], methods: list[str], five: bool = False) -> None:
    """Per network, each method's mean gap (``five``: five-term gap, or its lower bound) over the
    cells every one of ``methods`` ran."""
    gap = default_gap5s(rows) if five else {k: (g, False) for k, g in default_gaps(rows).items()}
    nets = sorted({k[1] for k in gap})
    print("| network | cells | " + " | ".join(methods) + " | smallest |\n|---|---|" + "---|" * (len(methods) + 1))
    for net in nets:
        cells = set.intersection(*({k[1:] for k in gap if k[0] == m and k[1] == net} for m in methods))
        if not cells:
            continue
        mean = {m: sum(gap[(m, *c)][0] for c in cells) / len(cells) for m in methods}
        bound = {m: any(gap[(m, *c)][1] for c in cells) for m in methods}
        top = min(mean, key=mean.get)
        clear = not bound[top]  # an exact gap5 below the others' lower bounds is below their gap5s
        print(f"| {net} | {len(cells)} | " + " | ".join(f"{'>= ' * bound[m]}{mean[m]:.2f}" for m in methods)
              + f" | {top if clear else 'undecided'} |")


def pairs(rows: list[dict], spec: str) -> None:
    """The gap tables of ``--pairs``: cells where both rows ran at their defaults, then per-network means."""
    gap = default_gaps(rows)
    for pair in spec.split(","):
        a, b = pair.split(":")
        cells = sorted({k[1:] for k in gap if k[0] == a} & {k[1:] for k in gap if k[0] == b})
        print(f"\n| network | scenario | seed | {a} gap | {b} gap | smaller |\n|---|---|---|---|---|---|")
        by_net: dict[str, list[tuple[float, float]]] = {}
        for cell in cells:
            ga, gb = gap[(a, *cell)], gap[(b, *cell)]
            by_net.setdefault(cell[0], []).append((ga, gb))
            print(f"| {' | '.join(map(str, cell))} | {ga:.2f} | {gb:.2f} | {a if ga < gb else b} |")
        wins = 0
        for net, got in by_net.items():
            ma, mb = (sum(g[i] for g in got) / len(got) for i in (0, 1))
            wins += ma < mb
            print(f"| {net} | mean of {len(got)} | | {ma:.2f} | {mb:.2f} | {a if ma < mb else b} |")
        print(f"\n{a} has the smaller mean gap on {wins} of {len(by_net)} networks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("units")
    parser.add_argument("--methods", default="invwnn+,invwnn")
    parser.add_argument("--pairs", default=None, help="A:B,... rows whose gaps to compare, cell by cell")
    parser.add_argument("--best", action="store_true", help="per network, which of --methods has the smallest gap")
    parser.add_argument("--gap5", action="store_true", help="with --best: the five-term gap (RMIA rows)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.units)]
    if args.pairs:
        return pairs(rows, args.pairs)
    if args.best:
        return best(rows, args.methods.split(","), args.gap5)
    ref = {(r["network"], r["scenario"], r["seed"]): r for r in rows if r.get("method") is None}
    print("| method | network | scenario | seed | way to Retrain's UA | TA (reading) vs original's | TA kept | "
          "time / Retrain | wall / Retrain | budget passes / Retrain's | backoffs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for r in rows:
            if r.get("method") != method or "UA" not in r:
                continue
            o = ref[(r["network"], r["scenario"], r["seed"])]
            before, after = o["original"]["UA"], o["retrain"]["UA"]
            way = (r["UA"] - before) / (after - before) if after != before else float("nan")
            key = "acc:other_classes" if r["scenario"] == "class" else "TA"
            ta, ta_o = r[key], o["original"][key]
            kept = ta >= ta_o if r["scenario"] == "label-noise" else ta >= ta_o - 1
            print(f"| {method} | {r['network']} | {r['scenario']} | {r['seed']} | {way:.2f} | {ta:.1f} vs {ta_o:.1f} | "
                  f"{'yes' if kept else 'no'} | {r['time_ratio']:.2f} | {r['wall_seconds'] / o['retrain']['seconds']:.2f} | "
                  f"{passes(r, o['sizes'])} | "
                  f"{len(r['backoffs'])} |")


if __name__ == "__main__":
    main()
