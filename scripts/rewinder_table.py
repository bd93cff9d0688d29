"""The learned rewinders against the tuned line and the repair-only control inside invwnn+ (issue 15),
from the benches `scripts/fair_bench.py --phase bench --methods ...` wrote to RESULTS/<scenario>/.

    .venv/bin/python scripts/rewinder_table.py [--results results/rewinders]

Prints one Markdown table: per scenario, each row's gap to Retrain at equal forgetting (mean over the
seeds that reached Retrain's UA, that count in brackets; "-": none did), its tuned horizon, its time
as a percentage of Retrain's (Retrain re-timed in the same pool), and which learned rows beat both the line and the control in
that scenario (a row that reached in fewer seeds than the line does not beat it). A row whose loop
takes a snapshot every 4 steps (`search.FIXED`) is held against the line in that same loop when the
bench ran it; the line whose spacing is searched (1, 2 or 4 steps) is shown with its choice, not held
against the learned rows, which cannot change theirs. Then the count of scenarios each learned row wins.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from invwnn.bench import report, search
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
    every 4 steps for the rows :data:`search.FIXED` holds there) when the bench ran it."""
    spaced = search.FIXED.get(name, {}).get("every", 1) == 4 and SPACED_LINE in benched
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
                         + (f", every {every}" if "every" in search.SPACES[name] else "")
                         + (f", {100 * share:.0f}%" if not math.isnan(share) else ""))
        winners = [n for n in learned if all(beats(rows.get(n), rows.get(c)) for c in rivals(n, benched))]
        for n in winners:
            wins[n] += 1
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {', '.join(LABEL[n] for n in winners) or 'none'} |")
    lines.append("")
    lines.append("Scenarios won (smaller gap than both the tuned line and repair only, at equal forgetting): "
                 + ", ".join(f"{LABEL[n]} {wins[n]} of {len(scenarios)}" for n in learned) + ".")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/rewinders"))
    print(table(ap.parse_args().results))


if __name__ == "__main__":
    main()
