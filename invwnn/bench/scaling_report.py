"""The scaling run's outputs from its rows (:mod:`invwnn.bench.scaling`): ``scaling.md`` (how it was run,
the sizes and their recipe, a table per scenario, the targets read off the largest size), ``scaling.json``
and ``scaling.png`` (time / Retrain and gap to Retrain against the training-set size), each written
atomically; with ``doc`` the Markdown there too, its plot beside it. Figures are mean ± std over the seeds
present, as in the bench's tables."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from invwnn.bench import panel, scaling
from invwnn.bench.report import cell, stats, versions
from invwnn.files import pyplot, save_fig, write_files

METRICS = ("RA", "UA", "TA", "MIA", "gap", "time_ratio", "wall_ratio", "acc:other_classes", "seconds", "wall_seconds")
# what issue 38 asks of the largest size: (row, figure, at most, what it is)
TARGETS = (("invwnn+", "time_ratio", 0.05, "invwnn+ at most 5% of Retrain's time"),
           ("invwnn+", "wall_ratio", 0.10, "the whole `apply` command (invwnn+) at most 10% of Retrain's time"))


def current(config: scaling.ScalingConfig, log: dict[str, dict]) -> dict[str, dict]:
    """Key -> row of ``config``'s units in ``log``: each unit's own row, and for a method unit that
    the method code has changed under (its key holds the code's fingerprint) the latest row of the
    same size, scenario, seed and method beside its group's reference, until a rerun replaces it: a
    report shows it, counted as run on other code."""
    latest = {(r["size"], r["scenario"], r["seed"], r["method"]): r for r in log.values() if r.get("method")}
    units = scaling.plan(config)
    refs = {u.group for u in units if u.method is None and u.key in log}
    out = {u.key: log[u.key] for u in units if u.key in log}
    for u in units:
        old = latest.get((*u.group, u.method))
        if u.method and u.key not in out and u.group in refs and old is not None:
            out[u.key] = old
    return out


def summarise(config: scaling.ScalingConfig, rows: dict[str, dict]) -> list[dict]:
    """One block per (size, scenario): the seeds present, the references' sizes, training accuracies
    and seconds, and a row each for Original, Retrain and every method (mean and std over seeds;
    methods that cannot run there under ``errors``)."""
    units = scaling.plan(config)
    blocks = []
    for size in sorted(config.sizes):
        for name in config.scenarios:
            mine = [u for u in units if u.size == size and u.scenario.name == name]
            refs = [rows[u.key] for u in mine if u.method is None and u.key in rows]
            block = {"size": size, "scenario": name, "seeds": [r["seed"] for r in refs],
                     "sizes": refs[0]["sizes"] if refs else {}, "rows": [], "errors": {}}
            for which in ("original", "retrain"):
                block[which] = {"n": len(refs), **stats([r[which] for r in refs], ("train_acc", "seconds"))}
                block["rows"].append({"name": which.capitalize(), "n": len(refs),
                                      **stats([r[which] for r in refs], METRICS)})
            for method in config.methods:
                got = [rows[u.key] for u in mine if u.method == method and u.key in rows]
                if any("error" in r for r in got):
                    block["errors"][method] = next(r["error"] for r in got if "error" in r)
                    continue
                block["rows"].append({"name": method, "n": len(got), **stats(got, METRICS),
                                      **({"stop": sorted({r["stop_reason"] for r in got}),
                                          "backoffs": float(np.mean([len(r["backoffs"]) for r in got]))}
                                         if got else {})})
            blocks.append(block)
    return blocks


def targets(config: scaling.ScalingConfig, blocks: list[dict]) -> list[str]:
    """The issue's targets read off the largest size of ``config``, per scenario: met, missed, or
    not yet measured."""
    size, out = max(config.sizes), []
    for method, key, bound, what in TARGETS:
        for b in (b for b in blocks if b["size"] == size):
            row = next((r for r in b["rows"] if r["name"] == method and key in r), None)
            verdict = ("not measured yet" if row is None else
                       f"**{'met' if row[key] <= bound else 'missed'}**: {row[key]:.3f} x Retrain")
            out.append(f"- {what}, {size:,} training images, {b['scenario']}: {verdict}")
    return out


def _machine(rows: dict[str, dict]) -> str:
    dates = sorted({r["date"] for r in rows.values() if "date" in r})
    threads = sorted({r["threads"] for r in rows.values() if "threads" in r})
    loads = [r["load"] for r in rows.values() if "load" in r]
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores as this process sees them, "
            f"{'/'.join(map(str, threads)) or '?'} torch thread(s) a unit; units run "
            f"{dates[0] + ' to ' + dates[-1] if len(dates) > 1 else dates[0] if dates else 'not yet'}"
            + (f"; 1-minute load average {min(loads):.1f} to {max(loads):.1f} as units ended "
               f"({len(loads)} of {len(rows)} recorded it)" if loads else ""))


def markdown(config: scaling.ScalingConfig, blocks: list[dict], rows: dict[str, dict], command: str) -> str:
    """``scaling.md``: how it was run, the sizes (recipe, training accuracy, seconds), a table per
    scenario with a block of rows per size, and the targets."""
    out = ["# The scaling run: where unlearning matters", "", f"Command: `{command}`", "",
           f"Machine: {_machine(rows)}. Seeds: {', '.join(map(str, config.seeds))}.", "",
           f"`{config.arch}` (torchvision's, ImageNet stem) on Fashion-MNIST as 3x32x32, {config.test_size or 'all'} "
           f"test images; the original and Retrain by one recipe at every size: Adam at {config.lr:g}, batch "
           f"{config.batch_size}, {config.epochs:g} epochs (one original a size and seed serves every scenario). "
           "Each method runs as the `invwnn apply` command runs it (`invwnn.unlearn.apply.unlearn` on the model "
           f"as safetensors and the splits as tensor files) at its library defaults, guard at {config.max_drop:g} "
           "points. RA, UA, TA, MIA in percent (mean ± std over seeds); gap = mean |metric - Retrain's| over the "
           "four; time / Retrain = the method's seconds (guard checks excluded) over Retrain's training seconds; "
           "command / Retrain = the whole `unlearn` call (reading the files, the guard, evaluation before and "
           "after, writing the model) over the same. Retrain's seconds are its training's, measured when it "
           "was trained, under that moment's load.", "",
           "| training images | scenario | forget | retain | Original train acc | Retrain train acc (retain) | "
           "Original s | Retrain s | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for b in blocks:
        s, n = b["sizes"], len(b["seeds"])
        out.append(f"| {b['size']:,} | {b['scenario']} | {s.get('forget', '-')} | {s.get('retain', '-')} | "
                   + " | ".join(cell(b[w], k, d) if n else "-" for w, k, d in (
                       ("original", "train_acc", 1), ("retrain", "train_acc", 1), ("original", "seconds", 0),
                       ("retrain", "seconds", 0)))
                   + f" | {n} |")
    out.append("")
    code = panel.code_fingerprint()
    stale = [r for r in rows.values() if r.get("method") and r.get("code") != code]
    if stale:
        out += [f"{len(stale)} of these method rows ran on other method or guard code than the working tree's "
                f"(fingerprint {code}).", ""]
    for name in config.scenarios:
        extra = name == "class"
        head = ["training images", "method", "RA", "UA", "TA", "MIA", "gap", "time / Retrain", "command / Retrain",
                "method s", "command s", "backoffs", "stop", *(["TA other classes"] if extra else []), "seeds"]
        out += [f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in (b for b in blocks if b["scenario"] == name):
            for r in b["rows"]:
                method = r["name"] in config.methods
                out.append("| " + " | ".join([
                    f"{b['size']:,}", r["name"], *(cell(r, k, 1) for k in ("RA", "UA", "TA", "MIA")), cell(r, "gap"),
                    *((cell(r, "time_ratio", 3), cell(r, "wall_ratio", 3), cell(r, "seconds", 0),
                       cell(r, "wall_seconds", 0), f"{r['backoffs']:.1f}" if r["n"] else "-",
                       ", ".join(r.get("stop", ())) or "-")
                      if method else ("-",) * 6),
                    *([cell(r, "acc:other_classes", 1)] if extra else []), str(r["n"])]) + " |")
            out += [f"- {b['size']:,}, {m}: not run here ({e})" for m, e in b["errors"].items()]
        out.append("")
    out += [f"## Targets (issue 38), read off {max(config.sizes):,} training images", "", *targets(config, blocks), ""]
    return "\n".join(out)


def plot(config: scaling.ScalingConfig, blocks: list[dict], path: Path) -> None:
    """Per scenario (a row of panels): time / Retrain (solid: the method's seconds; dashed: the
    whole command) and gap to Retrain (the Original's dotted) against the training-set size, log x."""
    plt = pyplot()
    fig, axes = plt.subplots(len(config.scenarios), 2, figsize=(11, 3.6 * len(config.scenarios)), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for (ax_t, ax_g), name in zip(axes, config.scenarios):
        mine = sorted((b for b in blocks if b["scenario"] == name), key=lambda b: b["size"])
        for i, m in enumerate(("Original", *config.methods)):
            pts = [(b["size"], r) for b in mine for r in b["rows"] if r["name"] == m and "gap" in r]
            if not pts:
                continue
            color, xs = ("0.4", [p[0] for p in pts]) if m == "Original" else (colors[i % 10], [p[0] for p in pts])
            ax_g.errorbar(xs, [r["gap"] for _, r in pts], yerr=[r["gap_std"] for _, r in pts], color=color,
                          marker="o", ls=":" if m == "Original" else "-", capsize=2, label=m)
            if m != "Original":
                ax_t.plot(xs, [r["time_ratio"] for _, r in pts], "o-", color=color, label=f"{m} (method)")
                ax_t.plot(xs, [r["wall_ratio"] for _, r in pts], "s--", color=color, mfc="none",
                          label=f"{m} (command)")
        for bound, style in ((0.05, "-."), (0.10, ":")):
            ax_t.axhline(bound, color="k", ls=style, lw=0.8)
        ax_t.set(xscale="log", yscale="log", xlabel="training images", ylabel="time / Retrain's",
                 title=f"{name}: time over Retrain's (lines: the 5% and 10% targets)")
        ax_g.set(xscale="log", xlabel="training images", ylabel="gap to Retrain (points)",
                 title=f"{name}: gap to Retrain (dotted: the Original's)")
        for ax in (ax_t, ax_g):
            ax.grid(alpha=0.3)
        for ax in (ax_t, ax_g):
            if ax.get_legend_handles_labels()[0]:  # nothing measured yet: no legend
                ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_fig(fig, path)


def write(config: scaling.ScalingConfig, rows: dict[str, dict], out: str | Path, command: str = "",
          doc: str | Path | None = None) -> list[Path]:
    """Write ``scaling.md``, ``scaling.json`` and ``scaling.png`` under ``out`` from the rows of
    ``config``'s units in the log ``rows`` (:func:`current`), and with ``doc`` the Markdown there too (its plot beside it, linked);
    returns the paths written."""
    out = Path(out)
    rows = current(config, rows)
    blocks = summarise(config, rows)
    md = markdown(config, blocks, rows, command)
    record = {"config": config.to_dict(), "command": command, "code": panel.code_fingerprint(), "blocks": blocks,
              "rows": list(rows.values()), "versions": versions()}
    written = write_files({out / "scaling.md": md, out / "scaling.json": json.dumps(record, indent=1, default=str)})
    plot(config, blocks, out / "scaling.png")
    written.append(out / "scaling.png")
    if doc is not None:
        doc = Path(doc)
        png = doc.with_name(f"{doc.stem}.png")
        written += write_files({doc: md + f"\n![scaling: time and gap against training-set size]({png.name})\n",
                                png: (out / "scaling.png").read_bytes()})
    return written
