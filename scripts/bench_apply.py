"""Writes docs/bench.md's speed table:
wall time of every unlearning method as a ratio to ``retrain`` in the same run, on the
Fashion-MNIST CNN with a random 10% of the training subset forgotten (``invwnn prepare``'s model).

    .venv/bin/python scripts/bench_apply.py [--full] [--out data/bench_apply] [--methods a,b]

Default sizes are the demo's (3,000 training images); ``--full`` uses BRIEF section 6's 10,000
images and 20 epochs. InvWNN runs with the shipped predictor unless ``--rewinder linear|meta``. Methods
that cannot run on this scenario (mnemonic needs whole-class forgetting and codes) are listed as
skipped with the reason. Prints a Markdown table and writes it with a JSON copy into ``--out``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from invwnn.unlearn.apply import Inputs, unlearn
from invwnn.unlearn.methods import REGISTRY
from invwnn.errors import InputError
from invwnn.inputs.prepare import PrepareConfig, prepare


@click.command()
@click.option("--out", default="data/bench_apply", show_default=True)
@click.option("--full", is_flag=True, help="BRIEF section 6 sizes (10k images, 20 epochs).")
@click.option("--methods", default=",".join(REGISTRY), show_default=True)
@click.option("--rewinder", default="learned", show_default=True, type=click.Choice(["learned", "meta", "linear"]))
@click.option("--seed", default=0, show_default=True)
def main(out, full, methods, rewinder, seed):
    out = Path(out)
    size = dict(train_size=10000, test_size=10000, epochs=20.0) if full else {}
    config = PrepareConfig(forget="random", forget_fraction=0.1, seed=seed, **size)
    if not (out / "original" / "model.pt").exists():
        prepare(out / "original", config, progress=True)
    root = out / "original"
    inputs = Inputs(str(root / "model.pt"), str(root / "forget"), str(root / "retain"), str(root / "test"))
    names = ["retrain"] + [m for m in methods.split(",") if m != "retrain"]
    rows = {}
    for name in names:
        t0 = time.time()
        try:
            given = {"rewinder": rewinder} if name in ("invwnn", "invwnn+") else {}
            rep = unlearn(inputs, name, given, out=str(out / f"{name}.pt"), seed=seed,
                          max_drop=None)  # speed at the method's own budget: no guard stop
        except InputError as err:
            rows[name] = {"skipped": str(err)}
            continue
        rows[name] = {"seconds": rep["seconds"], "wall": time.time() - t0, "after": rep["after"]}
    base = rows["retrain"]["seconds"]
    lines = ["| method | seconds | / retrain | RA | UA | TA | MIA |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {name} | - | - | skipped: {r['skipped']} | | | |")
            continue
        a = r["after"]
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / base:.2f} | "
                     + " | ".join(f"{a[k]:.1f}" for k in ("RA", "UA", "TA", "MIA")) + " |")
    table = "\n".join(lines)
    click.echo(table)
    (out / "bench_apply.md").write_text(table + "\n")
    (out / "bench_apply.json").write_text(json.dumps({"config": config.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
