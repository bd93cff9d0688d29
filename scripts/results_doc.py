"""Rebuild the "## Results" section of docs/results.md from results/<scenario>/table.md and copy
the plots to docs/results/, so the document shows exactly what `invwnn bench` wrote.

    .venv/bin/python scripts/results_doc.py [--results results] [--doc docs/results.md]

Everything outside "## Results" (set-up notes, discussion) is left as it is.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from invwnn.bench.scenarios import SCENARIOS


def section(results: Path, plots: Path) -> str:
    parts = ["## Results\n"]
    for name in SCENARIOS:
        folder = results / name
        if not (folder / "table.md").is_file():
            parts.append(f"### {name}\n\nNot run yet: `invwnn bench --scenario {name}`.\n")
            continue
        quick = "--quick" in json.loads((folder / "results.json").read_text())["command"]
        tag = f"{name}-quick" if quick else name
        for plot in ("trajectories", "gap"):
            shutil.copyfile(folder / f"{plot}.png", plots / f"{tag}-{plot}.png")
        parts.append((folder / "table.md").read_text().strip() + "\n")
        parts.append(f"![{name} trajectories](results/{tag}-trajectories.png) "
                     f"![{name} gap](results/{tag}-gap.png)\n")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()
    plots = args.doc.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    text = args.doc.read_text()
    start = text.index("## Results\n")
    end = text.index("\n## ", start + 1) + 1
    args.doc.write_text(text[:start] + section(args.results, plots) + text[end:])


if __name__ == "__main__":
    main()
