"""``invwnn bench`` (every protocol, search included), ``invwnn tune`` and the ``invwnn panel`` alias:
flags in, library calls out (docs/bench.md)."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from invwnn.errors import InputError
from trajgen.cli_errors import user_errors


def _command(ctx: click.Context, name: str = "bench") -> str:
    """The command line that reproduces this run: every option given on it."""
    parts = ["invwnn", name]
    for p in ctx.command.params:
        v = ctx.params[p.name]
        if ctx.get_parameter_source(p.name) is click.core.ParameterSource.DEFAULT or v is None:
            continue
        if p.is_flag and p.secondary_opts:
            parts.append(p.opts[0] if v else p.secondary_opts[0])
        elif p.is_flag:
            parts += [p.opts[0]] if v else []
        elif p.multiple:
            for item in v:
                parts += [p.opts[0], str(item)]
        else:
            parts += [p.opts[0], str(v)]
    return shlex.join(parts)


def _list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(s.strip() for s in text.split(",") if s.strip())


def _sizes(text: str | None) -> tuple[int, ...] | None:
    try:
        return None if text is None else tuple(int(s) for s in _list(text))
    except ValueError:
        raise InputError(f"--sizes takes a comma list of whole numbers, got {text!r}") from None


def _log(s: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(s, file=sys.stderr)


@click.command("bench")
@click.option("--protocol", type=click.Choice(["equal", "as-run", "forget-only", "scaling"]), default="equal",
              show_default=True,
              help="equal: every row stopped at Retrain's UA (and at its default budget); as-run: every row "
                   "through `invwnn apply` with the guard, to its own stop, on torchvision networks (the panel); "
                   "forget-only: as-run from model files the project never trained, forget and test data only; "
                   "scaling: torchvision's resnet18 at growing training-set sizes, each method as the `invwnn apply` "
                   "command runs, timed against Retrain")
@click.option("--phase", type=click.Choice(["tune", "bench", "all"]), default="bench", show_default=True,
              help="equal: tune (search, write the records), bench (with the records), or both")
@click.option("--scenario", "--scenarios", "scenario", default=None,
              help="comma list of random10, random50, class, label-noise, overfit, backdoor, paper [equal: every "
                   "tunable one; as-run: class, random10, label-noise; forget-only: lenet-noisy, lenet-random, "
                   "mobilenet-random]")
@click.option("--methods", default="all", show_default=True, help="'all' or a comma list of rows (invwnn/bench/rows.py)")
@click.option("--seeds", type=click.IntRange(1, 100), default=None, help="number of seeds 0..N-1 [3; --quick, scaling: 1]")
@click.option("--out", default=None, help="output folder [results/SCENARIO; several scenarios: results, one "
              "folder each; as-run: results/panel; forget-only: results/forget-only]")
@click.option("--state", default=None, help="resumable log of finished units [OUT/units.jsonl]")
@click.option("--quick", is_flag=True, help="equal: small data and budget (2k training images, 1k test, 8 epochs); "
              "as-run: the miniature networks")
@click.option("--dataset", default=None, help="equal: trajgen dataset name [fashion-mnist; paper: cifar10]")
@click.option("--data-root", default=None, help="folder holding the dataset files")
@click.option("--download", is_flag=True, help="let torchvision download a dataset not found on disk")
@click.option("--arch", default=None, help="equal: trajgen architecture family [cnn; paper: resnet18]; scaling: "
              "torchvision:NAME[:k=v,...] [torchvision:resnet18:num_classes=10]")
@click.option("--width", type=click.IntRange(1), default=None, help="equal: network width")
@click.option("--train-size", type=click.IntRange(0), default=None, help="equal: training images (0: all)")
@click.option("--sizes", default=None, help="scaling: comma list of training-set sizes [2000,10000,60000; --quick: "
              "100,200]")
@click.option("--test-size", type=click.IntRange(0), default=None, help="test images (0: all)")
@click.option("--val-size", type=click.IntRange(0), default=None, help="equal: validation images")
@click.option("--epochs", type=click.FloatRange(0, min_open=True), default=None,
              help="equal, scaling: original/retrain epochs")
@click.option("--tuned", default=None, help="tuning record or folder of <scenario>.json records [the packaged "
              "invwnn/bench/tuned/]; 'none': library defaults; --phase tune writes there")
@click.option("--trials", type=click.IntRange(1), default=None, help="--phase tune: configurations per row [16]")
@click.option("--networks", default=None, help="as-run: comma list of resnet18, mobilenet_v3_small, convnext, vit_tv [all]")
@click.option("--settings", default="defaults,tuned", show_default=True,
              help="as-run, forget-only: defaults, tuned (as-run: the bench's records; forget-only: the knob chosen "
                   "on validation), or both")
@click.option("--predictor", "predictors", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="equal: predictor checkpoint for the learned rows, each taking the one whose K is its snapshots")
@click.option("--cache-dir", default="data/bench-cache", show_default=True, help="originals and retrained models")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp", is_flag=True, help="equal: bf16 autocast for training passes (CUDA only)")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch threads")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="worker processes")
@click.option("--references", type=click.IntRange(0), default=None,
              help="reference models for offline RMIA and the five-term gap (0: none) [equal: 4; as-run: 0]")
@click.option("--doc", type=click.Path(dir_okay=False), default=None,
              help="equal: also write this Markdown file (the search and the gaps across scenarios) and each "
                   "scenario's table and plots beside it; as-run, forget-only, scaling: the table there too (as-run, "
                   "scaling: its plot beside it)")
@click.option("--report-only", is_flag=True,
              help="as-run, forget-only, scaling: run nothing, write the tables from the log")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors(InputError, ValueError)
def bench(protocol, phase, scenario, methods, seeds, out, state, quick, dataset, data_root, download, arch, width,
          train_size, sizes, test_size, val_size, epochs, tuned, trials, networks, settings, predictors, cache_dir, device,
          amp, threads, jobs, references, doc, report_only, progress):
    """Run the bench: build each scenario, train and cache the original and Retrain, run every row
    under PROTOCOL (resuming from the log), and write the tables and plots."""
    import torch

    torch.set_num_threads(threads)
    command = _command(click.get_current_context())
    n_seeds = seeds or (1 if quick else 3)
    t0 = time.time()
    if protocol == "forget-only":
        from invwnn.bench import forget_only, rows as bench_rows
        out = out or "results/forget-only"
        results = forget_only.run_study(_list(scenario) or forget_only.CASES, tuple(range(n_seeds)),
                                        tuple(bench_rows.names(methods, tuple(bench_rows.FORGET_ONLY))),
                                        _list(settings), out, report_only, jobs, progress, _log, state)
        files = forget_only.write(results, out, command, doc)
        click.echo(f"forget-only: {len(results['runs'])} runs, {len(files)} files in {out} ({time.time() - t0:.0f} s)")
        return
    if protocol == "scaling":
        from invwnn.bench import scaling, scaling_report
        from invwnn.bench.pool import read_log
        config = scaling.config_from(
            quick, sizes=_sizes(sizes), scenarios=_list(scenario),
            methods=None if methods.strip() == "all" else _list(methods), seeds=tuple(range(seeds or 1)),
            arch=arch, epochs=epochs, test_size=test_size, cache_dir=cache_dir, data_root=data_root, device=device)
        out = out or "results/scaling"
        state = state or Path(out) / "units.jsonl"
        rows = read_log(state) if report_only else scaling.run_scaling(
            config, state, progress, _log, jobs, lambda done: scaling_report.write(config, done, out, command, doc))
        files = scaling_report.write(config, rows, out, command, doc)
        click.echo(f"scaling: {len(scaling.plan(config))} units, {len(files)} files in {out} ({time.time() - t0:.0f} s)")
        return
    if protocol == "as-run":
        from invwnn.bench import panel, panel_report
        from invwnn.bench.pool import read_log
        config = panel.config_from(
            _list(networks), quick, scenarios=_list(scenario), seeds=tuple(range(n_seeds)),
            methods=panel.METHODS if methods.strip() == "all" else _list(methods), settings=_list(settings),
            test_size=test_size, cache_dir=cache_dir, data_root=data_root, device=device, references=references)
        out = out or "results/panel"
        state = state or Path(out) / "units.jsonl"
        rows = read_log(state) if report_only else panel.run_panel(config, state, progress, _log, jobs)
        files = panel_report.write(config, rows, out, command, doc)
        click.echo(f"panel: {len(panel.plan(config))} units, {len(files)} files in {out} ({time.time() - t0:.0f} s)")
        return
    from invwnn.bench import report, rows as bench_rows, runner, scenarios, search
    names = _list(scenario) or scenarios.TUNABLE
    configs = {s: scenarios.scenario_config(s, quick, dataset=dataset, data_root=data_root, arch=arch, width=width,
                                            train_size=train_size, test_size=test_size, val_size=val_size,
                                            epochs=epochs) for s in names}
    rows = tuple(bench_rows.names(methods))
    root = Path(out or (f"results/{names[0]}" if len(names) == 1 else "results"))
    state = state or root / "units.jsonl"
    if download:
        for config in configs.values():
            scenarios.dataset(config, download=True)
    if phase != "bench":
        if tuned == "none":
            raise InputError("--phase tune writes records: give --tuned a folder, or leave it out")
        where = Path(tuned) if tuned else search.TUNED_DIR
        search.tune(configs, rows, trials or search.TRIALS, cache_dir, device, jobs, progress, _log, where, command,
                    state)
        if phase == "tune":
            for s in names:
                record = search.tuned_path(s, where)
                click.echo(f"{s}: tuned {len(rows)} rows -> {record} (trials: {search.journal_path(record)})")
            return
    benches = {}
    for s, config in configs.items():
        overrides, record = ({}, None) if tuned == "none" else search.load(s, tuned)
        benches[s] = (config, runner.BenchConfig(methods=rows, seeds=tuple(range(n_seeds)), cache_dir=cache_dir,
                                                 device=device, progress=progress, method_overrides=overrides,
                                                 jobs=jobs, amp=amp, predictors=tuple(predictors),
                                                 references=4 if references is None else references), record)
    done = runner.run(benches, state, progress, _log)
    folders = {s: root if len(names) == 1 else root / s for s in done}
    for s, results in done.items():
        results.update(command=command, wall_seconds=time.time() - t0, threads=threads)
        files = report.write(results, folders[s])
        click.echo(f"{s}: {len(files)} files in {folders[s]} ({results['wall_seconds']:.0f} s)")
    if doc is not None:
        from invwnn.bench import summary
        click.echo(f"{len(summary.write_docs(done, folders, doc, command))} files beside {doc}")


@click.command("panel", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               add_help_option=False)
@click.pass_context
def panel(ctx):
    """`invwnn bench --protocol as-run`: the architecture panel (every row as `invwnn apply` runs it)."""
    bench.main(["--protocol", "as-run", *ctx.args], prog_name="invwnn bench")


@click.command("tune", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               add_help_option=False)
@click.pass_context
def tune(ctx):
    """`invwnn bench --phase tune`: search every row on each scenario's validation split and write the
    records `invwnn bench` applies (`--tuned DIR`; an Optuna journal of the trials beside each)."""
    bench.main(["--phase", "tune", *ctx.args], prog_name="invwnn bench")
