"""The as-run protocol's outputs from its rows (:mod:`invwnn.bench.panel`): ``panel.md`` (a table per
network and scenario), ``panel.json``, ``panel.png`` (gap to Retrain per method and network, a panel
per scenario) and, on request, the same Markdown as a document with its plot beside it; each written
atomically. Figures are mean ± std over the seeds present, as in the bench's tables."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from invwnn.bench import panel
from invwnn.bench.report import cell, mean_std, stats, versions
from invwnn.files import pyplot, save_fig, write_files

_TUNED = ("at the bench's tuned values (`invwnn/bench/tuned/<scenario>.json`, chosen on the bench's CNN; "
          "nothing tuned per network)")
SETTINGS_TEXT = {("defaults",): "at its library defaults (nothing tuned)", ("tuned",): _TUNED,
                 ("defaults", "tuned"): f"at its library defaults and {_TUNED}",
                 ("tuned", "defaults"): f"at its library defaults and {_TUNED}"}
METRICS = ("RA", "UA", "TA", "MIA", "gap", "time_ratio", "backoffs", "acc:other_classes", "TA_recovered", "gap5",
           "RMIA_AUC", "RMIA_TPR1", "RMIA_tail", "JS_forget")
PRIVACY = (("gap5", "gap5", 2), ("RMIA_AUC", "RMIA AUC", 1), ("RMIA_tail", "tail", 1))  # with --references
# scenario -> its extra column: (row metric, header)
EXTRA = {"class": ("acc:other_classes", "TA other classes"), "label-noise": ("TA_recovered", "TA_recovered")}


def _values(rows: list[dict]) -> list[dict]:
    """Per seed, the figures a table row averages (percent; time as a ratio; a method's backoffs
    as a count)."""
    out = []
    for r in rows:
        v = {**{k: r[k] for k in METRICS if k in r}, "TA_recovered": r["TA"] - r["original_TA"]}
        if "backoffs" in r:
            v["backoffs"] = len(r["backoffs"])
        out.append(v)
    return out


def _row(name: str, setting: str, per_seed: list[dict], rows: list[dict] = ()) -> dict:
    """Mean and std of every figure over ``per_seed``; for a method, how its runs stopped."""
    out = {"name": name, "setting": setting, "n": len(per_seed), **stats(per_seed, METRICS)}
    if rows:
        out["stop"] = dict(Counter(r["stop_reason"] for r in rows))
        out["unchanged"] = sum(r["unchanged"] for r in rows)
        out["retreated"] = sum(bool((r.get("retreat") or {}).get("share")) for r in rows)
        out["non_finite"] = sum(not r["finite"] for r in rows)
    return out


def summarise(config: panel.PanelConfig, rows: dict[str, dict]) -> list[dict]:
    """One block per (network, scenario): the networks' recipe and size, the seeds present, the
    Original's training accuracy, and a row each for Original, Retrain and every method at every
    setting (methods that cannot run there under ``errors``)."""
    units = panel.plan(config)
    blocks = []
    for net in config.nets:
        for scenario in config.scenarios:
            mine = [u for u in units if u.net == net and u.scenario.name == scenario]
            refs = [rows[u.key] for u in mine if u.method is None and u.key in rows]
            block = {"network": net.family, "scenario": scenario, "net": asdict(net),
                     "params": refs[0]["params"] if refs else None, "seeds": [r["seed"] for r in refs],
                     "errors": {}, "rows": []}
            orig_ta = {r["seed"]: r["original"]["TA"] for r in refs}
            for name in ("original", "retrain"):
                per_seed = _values([{**r[name], "original_TA": orig_ta[r["seed"]]} for r in refs])
                block["rows"].append(_row(name.capitalize(), "-", per_seed))
                block[f"{name}_train_acc"] = mean_std([r[name]["train_acc"] for r in refs])
                block[f"{name}_seconds"] = mean_std([r[name]["seconds"] for r in refs])
            for method in config.methods:
                for setting in config.settings:
                    got = [(u, rows[u.key]) for u in mine if u.method == method and setting in u.settings
                           and u.key in rows]
                    errors = [r["error"] for _, r in got if "error" in r]
                    if errors:
                        block["errors"][method] = errors[0]
                        continue
                    both = any(len(u.settings) > 1 for u, _ in got)
                    label = f"{setting} (= defaults)" if both and setting == "tuned" else setting
                    block["rows"].append(_row(method, label, _values([r for _, r in got]), [r for _, r in got]))
            blocks.append(block)
    return blocks


def _stop(row: dict) -> str:
    if "stop" not in row:
        return "-"
    text = ", ".join(f"{reason} {n}" for reason, n in sorted(row["stop"].items()))
    if row.get("retreated"):
        text += f"; retreated {row['retreated']}"
    if row["unchanged"]:
        text += f"; original kept {row['unchanged']}"
    if row["non_finite"]:
        text += f"; NON-FINITE {row['non_finite']}"
    return text


def _pm(stats: tuple[float, float], n: int) -> str:
    """Mean ± std (the mean alone for one value) of a (mean, std) pair over ``n`` values."""
    if n == 0:
        return "-"
    return f"{stats[0]:.1f} ± {stats[1]:.1f}" if n > 1 else f"{stats[0]:.1f}"


def names(config: panel.PanelConfig) -> tuple[str, str]:
    """The file stem (``panel``; ``panel-rmia`` with reference models) and the title of ``config``'s
    outputs: rows run with and without RMIA are different runs, reported side by side."""
    return ("panel-rmia", "# Architecture panel with RMIA") if config.references else ("panel", "# Architecture panel")


def markdown(config: panel.PanelConfig, blocks: list[dict], rows: dict[str, dict], command: str) -> str:
    """``panel.md``: how it was run, a table of the networks (size, recipe, how near the originals
    memorised their training sets, training seconds) and a table per network and scenario."""
    out = [names(config)[1], "", f"Command: `{command}`", "",
           "Networks the project does not build itself, on Fashion-MNIST as 3x32x32, each method run through "
           "`invwnn.unlearn.apply.apply` (what `invwnn apply` runs, guard at its default bound of "
           f"{config.max_drop:g} points) " + SETTINGS_TEXT[tuple(config.settings)] + ". "
           "RA, UA, TA, MIA in percent on the retain, forget and test splits (mean ± std over seeds); gap = "
           "mean |metric - Retrain's| over the four; time / Retrain = the method's seconds (guard checks "
           "excluded) over Retrain's training seconds; backoffs = the guard's, per run; stop = how the runs "
           "ended (budget, target, guard, non-finite), with the runs whose result is the original itself. "
           "`tuned (= defaults)`: the tuned values are the defaults, one run serves both rows. "
           "TA_recovered = TA - Original's TA."
           + (f" With {config.references} reference models (`--references`): gap5 = ReGUn's five-term gap (RA, TA, "
              "forget accuracy, offline RMIA accuracy and AUC), RMIA AUC of forget vs held-out images, tail = "
              "forget images scored above Retrain's 95th percentile (invwnn.audit.rmia)." if config.references else ""),
           "",
           "| network | parameters | width, depth | training images | epochs | batch | Adam step | "
           + " | ".join(f"Original train acc, {s}" for s in config.scenarios) + " | Original s | Retrain s |",
           "|---|" + "---|" * (8 + len(config.scenarios))]
    for net in config.nets:
        mine = [b for b in blocks if b["network"] == net.family]
        params = next((b["params"] for b in mine if b["params"]), None)
        secs = [b for b in mine if b["seeds"]]
        out.append(f"| {net.family} | {f'{params / 1e6:.2f}M' if params else '-'} | {net.width}, {net.depth or '-'} | "
                   f"{net.train_size} | {net.epochs:g} | {net.batch_size} | {net.lr:g} | "
                   + " | ".join(_pm(b["original_train_acc"], len(b["seeds"])) for b in mine) + " | "
                   + (f"{np.mean([b['original_seconds'][0] for b in secs]):.0f} | "
                      f"{np.mean([b['retrain_seconds'][0] for b in secs]):.0f} |" if secs else "- | - |"))
    out.append("")
    code = panel.code_fingerprint()
    stale = [r for r in rows.values() if r.get("method") and r.get("code") != code]
    if stale:
        out += [f"{len(stale)} of these method rows ran on other method or guard code than the working tree's "
                f"(fingerprint {code}).", ""]
    for b in blocks:
        extra = EXTRA.get(b["scenario"])
        privacy = [p for p in PRIVACY if any(p[0] in r for r in b["rows"])]
        head = ["method", "settings", "RA", "UA", "TA", "MIA", "gap", *(p[1] for p in privacy), "time / Retrain",
                "backoffs", "stop",
                *([extra[1]] if extra else []), "seeds"]
        out += [f"## {b['network']} on {b['scenario']}: seeds {', '.join(map(str, b['seeds'])) or 'none yet'}", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in b["rows"]:
            cells = [r["name"], r["setting"], *(cell(r, k, 1) for k in ("RA", "UA", "TA", "MIA")), cell(r, "gap"),
                     *(cell(r, k, digits) for k, _, digits in privacy), cell(r, "time_ratio"), cell(r, "backoffs", 1),
                     _stop(r), *([cell(r, extra[0], 1)] if extra else []), str(r["n"])]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        if b["errors"]:
            out += ["Not run here:", ""] + [f"- {m}: {e}" for m, e in b["errors"].items()] + [""]
    return "\n".join(out)


def plot(config: panel.PanelConfig, blocks: list[dict], path: Path) -> None:
    """Gap to Retrain per method (x) and network (colour), a panel per scenario: filled markers at
    the library defaults, open ones at the tuned values, std as error bars; the Original's gap as
    a dashed line in its network's colour. With reference models the five-term gap (gap5)."""
    plt = pyplot()
    key, what = ("gap5", "five-term gap") if config.references else ("gap", "gap")
    methods = list(config.methods)
    fig, axes = plt.subplots(len(config.scenarios), 1, figsize=(max(8, 0.8 * len(methods) + 3),
                                                                 3.6 * len(config.scenarios)), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, scenario in zip(axes[:, 0], config.scenarios):
        for i, net in enumerate(config.nets):
            block = next(b for b in blocks if b["network"] == net.family and b["scenario"] == scenario)
            color, shift = colors[i % len(colors)], (i - (len(config.nets) - 1) / 2) * 0.12
            for setting, face in (("defaults", color), ("tuned", "none")):
                if setting not in config.settings:
                    continue
                got = {r["name"]: r for r in block["rows"] if r["setting"].startswith(setting) and key in r}
                xs = [j + shift for j, m in enumerate(methods) if m in got]
                ax.errorbar(xs, [got[m][key] for m in methods if m in got],
                            yerr=[got[m][f"{key}_std"] for m in methods if m in got], fmt="o", color=color, mfc=face,
                            ms=5, capsize=2, lw=1, label=f"{net.family} ({setting})")
            original = block["rows"][0]
            if key in original:
                ax.axhline(original[key], color=color, ls="--", lw=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        ax.set_ylabel(f"{what} to Retrain (points)")
        ax.set_title(f"{scenario}: {what} to Retrain (dashed: the Original's; lower is better)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_fig(fig, path)


def write(config: panel.PanelConfig, rows: dict[str, dict], out: str | Path, command: str = "",
          doc: str | Path | None = None) -> list[Path]:
    """Write ``panel.md``, ``panel.json`` and ``panel.png`` (``panel-rmia.*`` with reference models:
    :func:`names`) under ``out`` from the rows of ``config``'s units, and with ``doc`` the Markdown
    there too (its plot beside it, linked); returns the paths written."""
    out = Path(out)
    stem = names(config)[0]
    keys = {u.key for u in panel.plan(config)}
    rows = {k: r for k, r in rows.items() if k in keys}
    blocks = summarise(config, rows)
    md = markdown(config, blocks, rows, command)
    record = {"config": config.to_dict(), "command": command, "code": panel.code_fingerprint(),
              "blocks": blocks, "rows": list(rows.values()), "versions": versions()}
    written = write_files({out / f"{stem}.md": md, out / f"{stem}.json": json.dumps(record, indent=1, default=str)})
    plot(config, blocks, out / f"{stem}.png")
    written.append(out / f"{stem}.png")
    if doc is not None:
        doc = Path(doc)
        written += write_files({doc: md + f"\n![architecture panel: gap to Retrain]({stem}.png)\n",
                                doc.with_name(f"{stem}.png"): (out / f"{stem}.png").read_bytes()})
    return written
