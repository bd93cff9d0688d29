"""The report across scenarios of one equal-forgetting bench: each row's search, its gap to Retrain in
every scenario at both stopping points, with reference models the attack's calibration; and the
generated Markdown files (``invwnn bench --doc FILE``): FILE with the command that made it at its top,
and beside it each scenario's table (``<scenario>.md``) and plots (``<scenario>-*.png``)."""
from __future__ import annotations

from pathlib import Path

from invwnn.bench import report
from invwnn.bench.rows import BENCH as ORDER
from invwnn.files import write_files


def tuning(done: dict[str, dict]) -> str:
    """Each row's search per scenario: the chosen configuration's validation gap, then the chosen values."""
    records = {name: res["tuning"] for name, res in done.items() if res.get("tuning")}
    if not records:
        return ""
    first = next(iter(records.values()))
    trials = {r["trials_per_method"] for r in records.values()}
    lines = ["## Tuning\n",
             f"Command: `{first.get('command', 'invwnn tune')}` ({first['date']}). Every method, rewinder ablation "
             f"and control of every scenario had the same search: {', '.join(map(str, sorted(trials)))} trials "
             f"(sampler: {first['sampler']}), each run once on tuning seed {first['seed']} (never reported) with "
             "TA and MIA measured on the validation split: "
             f"{first['data']['val']['n']} images of the training pool outside the training subset, so no test "
             f"image. Objective: {first['objective']}. Trial 0 of every row is the library defaults written "
             "out. The search spaces and every trial are in "
             "`invwnn/bench/tuned/<scenario>.json` and in each `results.json` (`tuning`).\n",
             "Gap to Retrain of the chosen configuration on the validation split (✓: it reached Retrain's UA; "
             "trials; summed method seconds of the search):\n",
             "| method | " + " | ".join(records) + " |", "|---|" + "---|" * len(records)]
    searched = {m for rec in records.values() for m in rec["methods"]}
    for method in [m for m in ORDER if m in searched] + sorted(searched - set(ORDER)):
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


def overview(done: dict[str, dict], summaries: dict[str, list[dict]]) -> str:
    """Gap to Retrain per method and scenario for both protocols. At equal forgetting: mean over
    the seeds that reached Retrain's UA, with the count; bold only for the best row of a scenario
    among those that reached it in every seed. ``summaries``: each scenario's :func:`report.summarise`."""
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
            if r is None or "error" in r or ("gap" in r and key not in r):
                cells.append("-")
                continue
            if "gap" not in r:
                cells.append(f"not reached (0/{r['seeds']})")
                continue
            text = f"{r[key]:.2f} ± {r[f'{key}_std']:.2f}"
            if proto == "equal" and name != "Original":
                text += f" ({r['reached']}/{r['seeds']})"
            cells.append(f"**{text}**" if r is best[s] else text)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def privacy(done: dict[str, dict], summaries: dict[str, list[dict]]) -> str:
    """With reference models: the attack's calibration per scenario and which row has the smallest
    gap (five-term and four-term) at each protocol."""
    if not any("RMIA_AUC" in r for s in summaries.values() for r in s):
        return ""
    lines = ["Calibration of offline RMIA (Retrain scored against the other references: near 50% means the "
             "attack cannot tell Retrain from a model trained without the data; the Original for scale):\n",
             "| | " + " | ".join(done) + " |", "|---|" + "---|" * len(done)]
    for who in ("Retrain", "Original"):
        auc = [next((r.get("RMIA_AUC") for r in summaries[name] if r["name"] == who), None) for name in done]
        lines.append(f"| {who} RMIA AUC (%) | " + " | ".join("-" if a is None else f"{a:.1f}" for a in auc) + " |")
    lines.append("")
    for key in ("gap5", "gap"):
        for proto, title in report.PROTOCOLS.items():
            best = {name: report.best_row([r for r in summaries[name] if r["protocol"] == proto], key) for name in done}
            won = [name for name, row in best.items() if row is not None and row["name"] == "invwnn+"]
            lines.append(f"- smallest {key}, {title}: " + ", ".join(
                f"{name} {row['name']} ({row[key]:.2f})" if row else f"{name} none" for name, row in best.items())
                + f"; invwnn+ in {len(won)} of {len(done)}.")
    return "\n".join(lines) + "\n"


def write_docs(done: dict[str, dict], folders: dict[str, Path], doc: str | Path, command: str) -> list[Path]:
    """``doc`` (the tuning, the gaps across scenarios, the attack's calibration) and beside it each
    scenario's table and the plots :func:`invwnn.bench.report.write` put in ``folders[name]``
    (``<doc's stem>-<scenario>.md``, ``...-gap.png``: two benches' files never collide), every file
    starting with the command; returns the paths written."""
    doc = Path(doc)
    stem = doc.stem
    summaries = {name: report.summarise(res) for name, res in done.items()}
    body = [f"# {stem.replace('-', ' ').capitalize()}", "", f"Generated by `{command}`; no figure here is edited by hand.",
            "", "Per scenario: " + ", ".join(f"[{name}]({stem}-{name}.md)" for name in done) + ".", "",
            tuning(done), overview(done, summaries), privacy(done, summaries)]
    files = {doc: "\n".join(body).rstrip() + "\n"}
    for name, res in done.items():
        table = report.markdown(res, summaries[name])
        for plot in ("trajectories", "gap"):
            files[doc.with_name(f"{stem}-{name}-{plot}.png")] = (Path(folders[name]) / f"{plot}.png").read_bytes()
        table += f"\n![{name} trajectories]({stem}-{name}-trajectories.png) ![{name} gap]({stem}-{name}-gap.png)\n"
        files[doc.with_name(f"{stem}-{name}.md")] = table
    return write_files(files)
