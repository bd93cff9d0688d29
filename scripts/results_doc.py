"""Writes docs/results.md's "## Tuning", "## Results" and yardstick sections and their plots (run by
`make yardstick`) from results/<scenario>/ (table.md, and results.json with the tuning record the
bench used), so the document shows exactly what the search and `invwnn bench` wrote.

    .venv/bin/python scripts/results_doc.py [--results results] [--doc docs/results.md]
    .venv/bin/python scripts/results_doc.py --yardstick results/yardstick   # that section only

Everything outside those two sections (set-up notes, discussion) is left as it is.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from invwnn.bench import report
from invwnn.bench.rows import BENCH as ORDER
from invwnn.bench.scenarios import TUNABLE as SCENARIOS  # paper has its own section


def _records(results: Path) -> dict[str, dict]:
    """Scenario -> the tuning record its bench used (copied into results.json)."""
    out = {}
    for name in SCENARIOS:
        f = results / name / "results.json"
        if f.is_file() and json.loads(f.read_text()).get("tuning"):
            out[name] = json.loads(f.read_text())["tuning"]
    return out


def tuning(results: Path) -> str:
    records = _records(results)
    if not records:
        return "## Tuning\n\nNot run yet: `invwnn bench --phase all` (or `invwnn tune`).\n\n"
    first = next(iter(records.values()))
    trials = {r["trials_per_method"] for r in records.values()}
    lines = ["## Tuning\n",
             f"Command: `{first.get('command', 'invwnn tune')}` ({first['date']}). Every method, rewinder ablation "
             f"and control of every scenario had the same search: {', '.join(map(str, sorted(trials)))} trials "
             f"(sampler: {first['sampler']}), each run once on tuning seed {first['seed']} (never reported) with "
             "TA and MIA measured on the validation split: "
             f"{first['data']['val']['n']} images of the training pool outside the training subset, so no test "
             f"image. Objective: {first['objective']}. Trial 0 of every row is the library defaults written "
             "out (for the four invwnn+ rows searched first, the defaults of that day: lr 2e-3, repair_lr 1e-3, "
             "before invwnn+'s defaults became these searches' medians). The search spaces and every trial are in "
             "`invwnn/bench/tuned/<scenario>.json` and in each `results.json` (`tuning`).\n",
             "Gap to Retrain of the chosen configuration on the validation split (✓: it reached Retrain's UA; "
             "trials; summed method seconds of the search):\n",
             "| method | " + " | ".join(records) + " |", "|---|" + "---|" * len(records)]
    for method in ORDER:
        cells = []
        for rec in records.values():
            m = rec["methods"].get(method)
            if m is None or m["chosen_trial"] is None:
                cells.append("every trial failed" if m else "-")
                continue
            row = m["rows"][m["chosen_trial"]]
            cells.append(f"{row['gap']:.2f}{' ✓' if row['reached'] else ''} ({m['trials']}, {m['seconds']:.0f} s)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, rec in records.items():
        lines += [f"<details><summary>{name}: chosen values</summary>\n", "| method | chosen |", "|---|---|"]
        for method, m in rec["methods"].items():
            picked = ", ".join(f"{k}={v}" for k, v in m["chosen"].items()) or "-"
            lines.append(f"| {method} | {picked} |")
        lines.append("\n</details>\n")
    return "\n".join(lines) + "\n"


def _benched(results: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Each scenario's ``results.json`` under ``results`` and its summary rows (report.summarise)."""
    done = {name: json.loads((results / name / "results.json").read_text()) for name in SCENARIOS
            if (results / name / "results.json").is_file()}
    return done, {name: report.summarise(res) for name, res in done.items()}


def overview(results: Path) -> str:
    """Gap to Retrain per method and scenario for both protocols. At equal forgetting: mean over
    the seeds that reached Retrain's UA, with the count; bold only for the best row of a scenario
    among those that reached it in every seed."""
    done, summaries = _benched(results)
    if not done:
        return ""
    rows = {name: {(r["name"], r["protocol"]): r for r in summ} for name, summ in summaries.items()}
    ran = {m for res in done.values() for m in res["bench"]["methods"]}
    methods = [m for m in (*ORDER, *sorted(ran - set(ORDER))) if any((m, "equal") in rows[s] for s in done)]
    gaps = {"gap": "Gap to Retrain (the paper's four terms: RA, UA, TA, SVC MIA)"}
    if any("gap5" in r for summ in summaries.values() for r in summ):
        gaps["gap5"] = ("Five-term gap to Retrain (ReGUn's: RA, TA, forget accuracy, RMIA accuracy and AUC against "
                        "reference models; `-` where a bench ran without `--references`)")
    out = []
    for key, what in gaps.items():
        for proto, title in report.PROTOCOLS.items():
            out += _gap_table(key, f"{what}, {title}", proto, ["Original", *methods], done, summaries, rows)
    return "\n".join(out) + "\n"


def _gap_table(key: str, title: str, proto: str, names: list[str], done: dict, summaries: dict, rows: dict) -> list[str]:
    note = ("mean ± std over the seeds that reached Retrain's UA, (k/n) seeds; bold: smallest among the rows "
            "that reached it in every seed" if proto == "equal" else "mean ± std over seeds; bold: smallest of the scenario")
    out = [f"{title} ({note}):\n", "| method | " + " | ".join(done) + " |", "|---|" + "---|" * len(done)]
    best = {s: report.best_row([r for r in summaries[s] if r["protocol"] == proto], key) for s in done}
    for name in names:
        cells = []
        for s in done:
            r = rows[s].get((name, "-" if name == "Original" else proto))
            if r is None or "error" in r:
                cells.append("-")
                continue
            if "gap" not in r:
                cells.append(f"not reached (0/{r['seeds']})")
                continue
            if key not in r:
                cells.append("-")
                continue
            text = f"{r[key]:.2f} ± {r[f'{key}_std']:.2f}"
            if proto == "equal" and name != "Original":
                text += f" ({r['reached']}/{r['seeds']})"
            cells.append(f"**{text}**" if r is best[s] else text)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def yardstick(results: Path) -> str:
    """The "## The 2026 yardstick" section from a bench run with references (``--yardstick DIR``):
    the attack's calibration per scenario, both gaps at both protocols, and which row has the
    smallest five-term gap where."""
    done, summaries = _benched(results)
    if not done:
        return "## The 2026 yardstick\n\nNot run yet (see docs/bench.md).\n\n"
    commands: dict[str, list[str]] = {}
    for name, res in done.items():
        commands.setdefault(res["command"], []).append(name)
    seeds = sorted({r["seed"] for res in done.values() for r in res["runs"]})
    lines = ["## The 2026 yardstick\n",
             "Commands: " + "; ".join(f"`{c}` ({', '.join(names)})" for c, names in commands.items())
             + f"; seeds {', '.join(map(str, seeds))}; every row at its tuned values of `invwnn/bench/tuned/` "
             "(validation split only); generated by `scripts/results_doc.py --yardstick "
             f"{results}`.\n",
             "Calibration of offline RMIA (Retrain scored against the other references: near 50% means the "
             "attack cannot tell Retrain from a model trained without the data; the Original for scale):\n",
             "| | " + " | ".join(done) + " |", "|---|" + "---|" * len(done)]
    for who in ("Retrain", "Original"):
        cells = []
        for name in done:
            row = next((r for r in summaries[name] if r["name"] == who), {})
            cells.append(f"{row['RMIA_AUC']:.1f}" if "RMIA_AUC" in row else "-")
        lines.append(f"| {who} RMIA AUC (%) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(overview(results))
    for key in ("gap5", "gap"):
        for proto, title in report.PROTOCOLS.items():
            best = {name: report.best_row([r for r in summaries[name] if r["protocol"] == proto], key) for name in done}
            won = [name for name, row in best.items() if row is not None and row["name"] == "invwnn+"]
            lines.append(f"- smallest {key}, {title}: " + ", ".join(
                f"{name} {row['name']} ({row[key]:.2f})" if row else f"{name} none" for name, row in best.items())
                + f"; invwnn+ in {len(won)} of {len(done)}.")
    return "\n".join(lines) + "\n\n"


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
    parser.add_argument("--results", type=Path, default=None,
                        help="bench results to rebuild '## Tuning' and '## Results' from [default: results/, "
                             "unless --yardstick is given alone]")
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--yardstick", type=Path, default=None,
                        help="also rebuild '## The 2026 yardstick' from this results folder (a bench with --references)")
    args = parser.parse_args()
    plots = args.doc.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    text = args.doc.read_text()
    parts = []
    if args.results is not None or args.yardstick is None:
        results = args.results or Path("results")
        parts += [("## Tuning\n", tuning(results)), ("## Results\n", section(results, plots))]
    if args.yardstick is not None:
        parts.append(("## The 2026 yardstick\n", yardstick(args.yardstick)))
    for title, body in parts:
        start = text.index(title)
        end = text.index("\n## ", start + 1) + 1
        text = text[:start] + body + text[end:]
    args.doc.write_text(text)


if __name__ == "__main__":
    main()
