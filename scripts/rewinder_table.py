"""Draws docs/results/rewinders.png and its table (docs/results/rewinders.md): the learned rewinders
against the tuned line and the repair-only control inside invwnn+, from the benches
`invwnn bench --methods ...` wrote to RESULTS/<scenario>/.

    .venv/bin/python scripts/rewinder_table.py [--results results/rewinders] [--plot docs/results/rewinders.png]

Prints one Markdown table: per scenario, each row's gap to Retrain at equal forgetting (mean over the
seeds that reached Retrain's UA, that count in brackets; "-": none did), its tuned horizon, its time
as a percentage of Retrain's (Retrain re-timed in the same pool), and which learned rows beat both the line and the control in
that scenario (a row that reached in fewer seeds than the line does not beat it). A row whose loop
takes a snapshot every 4 steps (its fixed settings, invwnn/bench/rows.py) is held against the line in that same loop when the
bench ran it; the line whose spacing is searched (1, 2 or 4 steps) is shown with its choice, not held
against the learned rows, which cannot change theirs. Then the count of scenarios each learned row wins.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from invwnn.bench import report
from invwnn.bench.rows import ROWS
from invwnn.files import pyplot, save_fig
from invwnn.bench.scenarios import SCENARIOS

LEARNED = ("invwnn+", "invwnn+-episodes", "invwnn+-episodes-context", "invwnn+-twins", "invwnn+-twins48",
           "invwnn+-runs500", "invwnn+-runs500-episodes")
CONTROLS = ("invwnn+-linear", "invwnn+-reset")
SPACED_LINE = "invwnn+-linear-every4"
SEARCHED_SPACING = "invwnn+-linear-spacing"  # shown, not a rival: the learned rows cannot change their spacing
LABEL = {"invwnn+": "scratch runs", "invwnn+-episodes": "episodes", "invwnn+-episodes-context": "episodes + context",
         "invwnn+-twins": "twins", "invwnn+-twins48": "48 twins", "invwnn+-runs500": "500 runs", "invwnn+-runs500-episodes": "500 runs + episodes",
         "invwnn+-linear": "tuned line", "invwnn+-reset": "repair only", SPACED_LINE: "tuned line, every 4",
         SEARCHED_SPACING: "tuned line, spacing searched"}


def _equal_rows(results: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report.summarise(results) if r.get("protocol") == "equal"}


def beats(a: dict | None, b: dict | None) -> bool:
    """``a`` beats ``b`` at equal forgetting: reached in more seeds, or as many and a smaller gap."""
    if a is None or not a.get("n"):
        return False
    if b is None or not b.get("n"):
        return True
    return a["n"] > b["n"] or (a["n"] == b["n"] and a["gap"] < b["gap"])


def rivals(name: str, benched: set[str]) -> tuple[str, str]:
    """The line and the control a learned row must beat: the line in the row's own loop (a snapshot
    every 4 steps for the rows that fix it there) when the bench ran it."""
    spaced = ROWS[name].fixed.get("every", 1) == ROWS[SPACED_LINE].fixed["every"] and SPACED_LINE in benched
    return (SPACED_LINE if spaced else "invwnn+-linear", "invwnn+-reset")


def table(results_dir: Path) -> str:
    scenarios = [s for s in SCENARIOS if (results_dir / s / "results.json").is_file()]
    loaded = {s: json.loads((results_dir / s / "results.json").read_text()) for s in scenarios}
    benched = {n for r in loaded.values() for n in r["bench"]["methods"]}
    learned = [n for n in LEARNED if n in benched]  # rows this bench ran
    controls = [*CONTROLS, *(n for n in (SPACED_LINE, SEARCHED_SPACING) if n in benched)]
    head = "| scenario | " + " | ".join(LABEL[n] for n in (*learned, *controls)) + " | learned rows beating line and control |"
    lines = [head, "|---" * (len(learned) + len(controls) + 2) + "|"]
    wins = {n: 0 for n in learned}
    for scenario in scenarios:
        results = loaded[scenario]
        rows = _equal_rows(results)
        chosen = {n: m["chosen"] for n, m in (results.get("tuning") or {}).get("methods", {}).items()}
        cells = []
        for name in (*learned, *controls):
            row = rows.get(name)
            if row is None or not row.get("n") or math.isnan(row.get("gap", math.nan)):
                cells.append(f"- (0/{len(results['runs'])})")
                continue
            h, every = chosen.get(name, {}).get("horizon"), chosen.get(name, {}).get("every")
            share = row.get("time_ratio", math.nan)
            cells.append(f"{row['gap']:.2f} ({row['n']}/{row['seeds']})" + (f", h {h:.2f}" if h is not None else "")
                         + (f", every {every}" if "every" in ROWS[name].space else "")
                         + (f", {100 * share:.0f}%" if not math.isnan(share) else ""))
        winners = [n for n in learned if all(beats(rows.get(n), rows.get(c)) for c in rivals(n, benched))]
        for n in winners:
            wins[n] += 1
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {', '.join(LABEL[n] for n in winners) or 'none'} |")
    lines.append("")
    lines.append("Scenarios won (smaller gap than both the tuned line and repair only, at equal forgetting): "
                 + ", ".join(f"{LABEL[n]} {wins[n]} of {len(scenarios)}" for n in learned) + ".")
    return "\n".join(lines)


def seed_gaps(results: dict, name: str) -> list[float | None]:
    """Row ``name``'s gap to Retrain at equal forgetting in each seed of ``results`` (None: that
    seed never reached Retrain's UA)."""
    out = []
    for run in results["runs"]:
        equal = run["methods"].get(name, {}).get("equal") or {}
        out.append(equal["gap"] if equal.get("reached") else None)
    return out


def plot(results_dir: Path, path: Path) -> None:
    """One panel per scenario where some row reached Retrain's UA: each row's gap per seed (dots) and
    its mean over the seeds that reached (bar); learned rows in colour, the lines and the control in
    grey; a seed that never reached is a cross at the top."""
    plt = pyplot()
    loaded = {s: json.loads((results_dir / s / "results.json").read_text()) for s in SCENARIOS
              if (results_dir / s / "results.json").is_file()}
    benched = {n for r in loaded.values() for n in r["bench"]["methods"]}
    names = [n for n in (*LEARNED, *CONTROLS, SPACED_LINE, SEARCHED_SPACING) if n in benched]
    gaps = {s: {n: seed_gaps(r, n) for n in names} for s, r in loaded.items()}
    shown = [s for s in gaps if any(g is not None for v in gaps[s].values() for g in v)]
    if not shown:
        raise SystemExit(f"rewinder_table: no rewinder row reached Retrain's UA in {results_dir}: nothing to plot")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 4.8), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, scenario in zip(axes[0], shown):
        top = max(g for v in gaps[scenario].values() for g in v if g is not None) * 1.1
        for i, name in enumerate(names):
            values = gaps[scenario][name]
            reached = [g for g in values if g is not None]
            colour = colours[i % 10] if name in LEARNED else "0.55"
            if reached:
                ax.barh(i, sum(reached) / len(reached), color=colour, alpha=0.35)
            ax.scatter(reached, [i] * len(reached), color=colour, s=14, zorder=3)
            missed = len(values) - len(reached)
            if missed:
                ax.scatter([top] * missed, [i] * missed, marker="x", color=colour, s=18, zorder=3)
        ax.set_yticks(range(len(names)), [LABEL[n] for n in names] if ax is axes[0][0] else [])
        ax.invert_yaxis()
        ax.set_title(scenario)
        ax.set_xlabel("gap to Retrain (points)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("invwnn+ rewinders at equal forgetting: per-seed gap (dots), mean (bar), "
                 "seed that never reached Retrain's UA (x)", fontsize=10)
    save_fig(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/rewinders"))
    ap.add_argument("--plot", type=Path, help="also draw the per-seed gaps into this PNG")
    args = ap.parse_args()
    print(table(args.results))
    if args.plot:
        plot(args.results, args.plot)


if __name__ == "__main__":
    main()
