"""Turn a bench's raw results (runner.run) into ``table.md``, ``results.csv``, ``results.json``,
``trajectories.png`` and ``gap.png``, each written atomically."""
from __future__ import annotations

import csv
import io
import json
import math
import platform
from pathlib import Path

import numpy as np

from invwnn import files
from invwnn.bench.rows import ROWS
from invwnn.files import atomic_write, pyplot, save_fig, write_files

METRICS = ("RA", "UA", "TA", "MIA", "gap", "seconds", "time_ratio")
# with reference models (``--references``): ReGUn's five-term gap and the RMIA / JS figures
PRIVACY = {"gap5": "gap5", "RMIA_AUC": "RMIA AUC", "RMIA_TPR1": "TPR@1%FPR", "RMIA_tail": "tail",
           "JS_forget": "JS forget", "JS_test": "JS test"}
PROTOCOLS = {"equal": "stopped at Retrain's UA", "budget": "default budget"}


def _extras(scenario: str, m: dict, original: dict) -> dict:
    """Scenario-specific figures of one result: test accuracy recovered (label noise, overfit)
    and attack success rate (backdoor), in percent."""
    out = {}
    if scenario in ("label-noise", "overfit"):
        out["TA_recovered"] = m["TA"] - original["TA"]  # test accuracy recovered, points
    if "acc:triggered_test" in m:
        out["ASR"] = m["acc:triggered_test"]
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value) of the values that are neither None nor NaN;
    (NaN, NaN) when none are."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarise(results: dict) -> list[dict]:
    """One row per (name, protocol): mean and std over seeds of every metric; rows Original and
    Retrain first. Methods that failed carry ``error``."""
    scenario = results["scenario"]["name"]
    runs = results["runs"]
    rows = []
    for name in ("original", "retrain"):
        per_seed = []
        for r in runs:
            m = dict(r[name])
            m.setdefault("gap", 0.0 if name == "retrain" else m.get("gap"))
            if name == "retrain" and "RMIA_AUC" in m:
                m.setdefault("gap5", 0.0)
            m.update(_extras(scenario, m, r["original"]))
            per_seed.append(m)
        rows.append(_row(name.capitalize(), "-", per_seed, len(runs)))
    for name in results["bench"]["methods"]:
        results_m = [r["methods"].get(name, {"error": "not run"}) for r in runs]
        errors = [m["error"] for m in results_m if "error" in m]
        if errors:
            rows.append({"name": name, "protocol": "-", "error": errors[0], "seeds": len(runs)})
            continue
        for proto in PROTOCOLS:
            per_seed = [{**m[proto], **_extras(scenario, m[proto], r["original"])} for m, r in zip(results_m, runs)]
            if proto == "equal":  # at equal forgetting: only the seeds where the method got there
                per_seed = [p for p in per_seed if p.get("reached")]
            row = _row(name, proto, per_seed, len(runs))
            row["reached"] = len(per_seed) if proto == "equal" else None
            row["stop_mode"] = results_m[0]["stop_mode"]
            rows.append(row)
    return rows


def stats(per_seed: list[dict], keys) -> dict:
    """``k`` and ``k_std``: mean and std over ``per_seed`` of each of ``keys`` that any of them holds."""
    out = {}
    for k in keys:
        if any(k in p for p in per_seed):
            out[k], out[f"{k}_std"] = mean_std([p.get(k) for p in per_seed])
    return out


def _row(name: str, protocol: str, per_seed: list[dict], seeds: int) -> dict:
    """Mean and std of every metric over ``per_seed`` (``n`` of them) out of ``seeds`` seeds."""
    return {"name": name, "protocol": protocol, "seeds": seeds, "n": len(per_seed),
            **stats(per_seed, (*METRICS, *PRIVACY, "TA_recovered", "ASR"))}


def best_row(rows: list[dict], key: str = "gap") -> dict | None:
    """The row with the smallest ``key`` (``gap``, or ``gap5``) among those complete over every seed
    (at equal forgetting: reached Retrain's UA in every seed); None if there is none."""
    full = [r for r in rows if r.get("n") == r["seeds"] and key in r and not math.isnan(r[key])]
    return min(full, key=lambda r: r[key], default=None)


def cell(row: dict, k: str, digits: int = 2) -> str:
    """``row[k]`` as mean ± std over the row's ``n`` seeds (the mean alone for one; '-' if absent)."""
    if k not in row or math.isnan(row[k]):
        return "-"
    return f"{row[k]:.{digits}f} ± {row[f'{k}_std']:.{digits}f}" if row["n"] > 1 else f"{row[k]:.{digits}f}"


def markdown(results: dict, rows: list[dict]) -> str:
    """Two tables (equal forgetting, default budget), rows Original, Retrain, each method. At equal
    forgetting a row's figures are over the seeds where it reached Retrain's UA (count shown); a
    row that reached it in no seed shows no figures; bold marks the best row that reached it in
    every seed."""
    scenario = results["scenario"]["name"]
    extra = [k for k in ("TA_recovered", "ASR") if any(k in r for r in rows)]
    privacy = [k for k in PRIVACY if any(k in r for r in rows)]
    head = ["method", "RA", "UA", "TA", "MIA", "gap to Retrain", *(PRIVACY[k] for k in privacy), "time (s)",
            "time / Retrain", *extra]
    out = [f"# {scenario}: {len(results['runs'])} seed(s) {', '.join(str(r['seed']) for r in results['runs'])}", "",
           f"Command: `{results.get('command', '')}`", "",
           "All figures in percent (mean ± std over seeds); gap = mean |metric - Retrain's| over RA, UA, "
           "TA, MIA; lower is better. Stopped at Retrain's UA: mean over the seeds where the method reached "
           "Retrain's UA (count in the last column); rows that never reached it show none; bold = smallest gap "
           "among the rows that reached it in every seed. "
           + ("TA_recovered = TA - Original's TA. " if "TA_recovered" in extra else "")
           + ("ASR = attack success rate on triggered test images of other classes. " if "ASR" in extra else "")
           + ("gap5 = ReGUn's five-term gap: mean |difference to Retrain| over RA, TA, forget accuracy, RMIA "
              "accuracy and RMIA AUC (offline RMIA against reference models trained on the retain set, Retrain "
              "one of them, scored against the others); TPR@1%FPR and tail (forget images above Retrain's 95th "
              "percentile) in percent; JS = Jensen-Shannon divergence to Retrain's outputs, in bits "
              "(invwnn.audit.rmia). " if privacy else ""),
           ""]
    refs = [r for r in rows if r["protocol"] == "-" and "error" not in r]
    failed = [r for r in rows if "error" in r]
    for proto, title in PROTOCOLS.items():
        out += [f"## {title}", "", "| " + " | ".join(head + (["reached UA_r"] if proto == "equal" else [])) + " |",
                "|" + "---|" * (len(head) + (proto == "equal")) ]
        methods = [r for r in rows if r["protocol"] == proto]
        best = best_row(methods)
        for r in refs + methods:
            cells = [r["name"] + (f" ({r['stop_mode']})" if r.get("stop_mode") and proto == "equal" else "")]
            if r.get("n") == 0:
                cells += ["not reached in any seed"] + [""] * (len(head) - 2)
            else:
                cells += [cell(r, k) for k in ("RA", "UA", "TA", "MIA", "gap", *privacy, "seconds", "time_ratio",
                                               *extra)]
            if r is best:
                cells[0], cells[5] = f"**{cells[0]}**", f"**{cells[5]}**"
            if proto == "equal":
                cells.append("-" if r.get("reached") is None else f"{r['reached']}/{r['seeds']}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if failed:
        out += ["Not run on this scenario:", ""] + [f"- {r['name']}: {r['error']}" for r in failed] + [""]
    return "\n".join(out)


def csv_text(results: dict, rows: list[dict]) -> str:
    cols = ["scenario", "name", "protocol", "seeds", "n", "stop_mode", "reached", "error"]
    for k in (*METRICS, *PRIVACY, "TA_recovered", "ASR"):
        cols += [k, f"{k}_std"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({"scenario": results["scenario"]["name"], **r})
    return buf.getvalue()


def versions() -> dict:
    import sklearn
    return {**files.versions(), "scikit-learn": sklearn.__version__, "python": platform.python_version(),
            "machine": platform.platform()}


def plot_trajectories(results: dict, path: Path) -> None:
    """Forget accuracy vs test accuracy at every check of the first seed, one line per method
    that has a trajectory; Original and Retrain as markers. Left: everything; right: zoomed on
    the region around Retrain, where the methods that keep the model usable end up."""
    plt = pyplot()
    run = results["runs"][0]
    retrain = (100 - run["retrain"]["UA"], run["retrain"]["TA"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab20").colors
    for ax in axes:
        for i, (name, m) in enumerate(run["methods"].items()):
            traj = m.get("trajectory") or []
            if traj:
                ax.plot([t["forget_acc"] for t in traj], [t["test_acc"] for t in traj], marker=".", ms=4,
                        lw=1.6 if ROWS[name].rewinder else 1, color=colors[i % len(colors)],
                        ls="--" if ROWS[name].method == "invwnn" else "-",  # the paper's loop dashed
                        label=name)
        for key, marker in (("original", "*"), ("retrain", "X")):
            ax.scatter([100 - run[key]["UA"]], [run[key]["TA"]], marker=marker, s=160, c="k", zorder=5,
                       label=key.capitalize())
        ax.axvline(retrain[0], color="k", ls=":", lw=1)
        ax.set_xlabel("forget-set accuracy (%)  (100 - UA)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    lo = min(retrain[0], 100 - run["original"]["UA"])
    axes[1].set_xlim(lo - 12, 101)
    axes[1].set_ylim(retrain[1] - 12, max(retrain[1], run["original"]["TA"]) + 3)
    axes[1].set_title("zoom around Retrain")
    axes[0].set_title(f"{results['scenario']['name']}: unlearning trajectories (seed {run['seed']}, check subsets)")
    axes[0].legend(fontsize=7, ncol=2)
    save_fig(fig, path)


def plot_gap(rows: list[dict], scenario: str, path: Path) -> None:
    """Bar chart of the gap to Retrain per method, both protocols, std as error bars (equal
    forgetting: over the seeds that reached it; no bar where none did)."""
    plt = pyplot()
    names = [r["name"] for r in rows if r["protocol"] == "equal"]
    orig = next(r for r in rows if r["name"] == "Original")
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.5))
    xs = np.arange(len(names))
    for i, proto in enumerate(PROTOCOLS):
        by = {r["name"]: r for r in rows if r["protocol"] == proto}
        ax.bar(xs + (i - 0.5) * 0.4, [by[n].get("gap", np.nan) for n in names], 0.4,
               yerr=[by[n].get("gap_std", 0.0) for n in names], label=PROTOCOLS[proto], capsize=2)
    ax.axhline(orig["gap"], color="k", ls="--", lw=1, label="Original (no unlearning)")
    ax.set_xticks(xs, names, rotation=40, ha="right")
    ax.set_ylabel("gap to Retrain (points, lower is better)")
    ax.set_title(f"{scenario}: average gap to Retrain")
    ax.legend(fontsize=8)
    save_fig(fig, path)


def write(results: dict, out: str | Path) -> list[Path]:
    """Write every output file under ``out``; returns their paths."""
    out = Path(out)
    rows = summarise(results)
    results = {**results, "summary": rows, "versions": versions()}
    written = write_files({out / "table.md": markdown(results, rows), out / "results.csv": csv_text(results, rows),
                           out / "results.json": json.dumps(results, indent=1, default=str)})
    plot_trajectories(results, out / "trajectories.png")
    plot_gap(rows, results["scenario"]["name"], out / "gap.png")
    return [*written, out / "trajectories.png", out / "gap.png"]
