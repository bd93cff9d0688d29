"""Rebuild the "## Tuning" and "## Results" sections of docs/results.md from
invwnn/bench/tuned.json (scripts/tune.py) and results/<scenario>/table.md, and copy the plots to
docs/results/, so the document shows exactly what the tuning and `invwnn bench` wrote.

    .venv/bin/python scripts/results_doc.py [--results results] [--doc docs/results.md]

Everything outside those two sections (set-up notes, discussion) is left as it is.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from invwnn.bench import report
from invwnn.bench.runner import ORDER, TUNED
from invwnn.bench.scenarios import SCENARIOS


def tuning(path: Path) -> str:
    if not path.is_file():
        return "## Tuning\n\nNot run yet: `python scripts/tune.py`.\n\n"
    t = json.loads(path.read_text())
    sc = t["scenario"]
    lines = ["## Tuning\n",
             f"Command: `{t['command'].strip()}` ({t['date']}). Scenario {sc['name']} at the full setting "
             f"(width {sc['width']}, {sc['train_size']} training images), tuning seed {t['seed']} (never "
             f"reported). Every tuned method gets the same budget, {t['grid_size']} configurations; the "
             f"choice: {t['criterion']}. Every other method runs with its library defaults.\n",
             "| method | grid | chosen | gap at equal UA (tuning seed) | time / Retrain |", "|---|---|---|---|---|"]
    for method, chosen in t["chosen"].items():
        grid = t["grids"][method]
        axes = "; ".join(f"{k} " + "/".join(sorted({str(c[k]) for c in grid}, key=float)) for k in grid[0])
        best = next(r for r in t["trials"] if r["method"] == method and r["overrides"] == chosen)
        picked = ", ".join(f"{k}={v}" for k, v in chosen.items())
        lines.append(f"| {method} | {axes} | {picked} | {best['gap']:.2f} | {best['time_ratio']:.3f} |")
    return "\n".join(lines) + "\n\n"


def overview(results: Path) -> str:
    """Gap to Retrain (mean ± std over seeds) per method and scenario, for both protocols, the
    smallest of each column in bold."""
    done = {name: json.loads((results / name / "results.json").read_text()) for name in SCENARIOS
            if (results / name / "results.json").is_file()}
    if not done:
        return ""
    rows = {name: {(r["name"], r["protocol"]): r for r in report.summarise(res)} for name, res in done.items()}
    methods = [m for m in ORDER if any((m, "equal") in rows[s] for s in done)]
    out = []
    for proto, title in report.PROTOCOLS.items():
        out += [f"Gap to Retrain, {title} (mean ± std over seeds; bold: smallest of the scenario):\n",
                "| method | " + " | ".join(done) + " |", "|---|" + "---|" * len(done)]
        best = {s: min(r["gap"] for (n, p), r in rows[s].items() if p == proto and "gap" in r) for s in done}
        for name in ["Original", *methods]:
            cells = []
            for s in done:
                r = rows[s].get((name, "-" if name == "Original" else proto))
                if r is None or "gap" not in r:
                    cells.append("-")
                    continue
                text = f"{r['gap']:.2f} ± {r['gap_std']:.2f}"
                cells.append(f"**{text}**" if name != "Original" and r["gap"] == best[s] else text)
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def section(results: Path, plots: Path) -> str:
    parts = ["## Results\n", overview(results)]
    for name in SCENARIOS:
        folder = results / name
        if not (folder / "table.md").is_file():
            parts.append(f"### {name}\n\nNot run yet: `invwnn bench --scenario {name}`.\n")
            continue
        quick = "--quick" in json.loads((folder / "results.json").read_text())["command"]
        tag = f"{name}-quick" if quick else name
        for plot in ("trajectories", "gap"):
            shutil.copyfile(folder / f"{plot}.png", plots / f"{tag}-{plot}.png")
        table = (folder / "table.md").read_text().strip()
        # one level down, so that the section's end is the document's next "## " heading
        parts.append("\n".join("##" + line if line.startswith("#") else line for line in table.splitlines()) + "\n")
        parts.append(f"![{name} trajectories](results/{tag}-trajectories.png) "
                     f"![{name} gap](results/{tag}-gap.png)\n")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--tuned", type=Path, default=TUNED)
    args = parser.parse_args()
    plots = args.doc.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    text = args.doc.read_text()
    for title, body in (("## Tuning\n", tuning(args.tuned)), ("## Results\n", section(args.results, plots))):
        start = text.index(title)
        end = text.index("\n## ", start + 1) + 1
        text = text[:start] + body + text[end:]
    args.doc.write_text(text)


if __name__ == "__main__":
    main()
