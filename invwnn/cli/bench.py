"""``invwnn bench``, ``tune`` and ``panel``: one command each, from data to tables and plots."""
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


@click.command("bench")
@click.option("--scenario", required=True,
              help="random10, random50, class, label-noise, overfit, backdoor, or paper (ResNet-18, CIFAR-10, "
                   "whole training set, forget 50%)")
@click.option("--methods", default="all", show_default=True, help="'all' or a comma-separated list")
@click.option("--seeds", type=click.IntRange(1, 100), default=None, help="number of seeds 0..N-1 [3; --quick: 1]")
@click.option("--out", default=None, help="output folder [results/SCENARIO]")
@click.option("--quick", is_flag=True, help="small data and budget (2k training images, 1k test, 8 epochs)")
@click.option("--dataset", default=None, help="trajgen dataset name: fashion-mnist, fashion-mnist-rgb, mnist, "
              "cifar10, cifar100 [fashion-mnist; paper: cifar10]")
@click.option("--data-root", default=None, help="folder holding the dataset files (CIFAR: torchvision's "
              "cifar-10-batches-py / cifar-100-python folder, or the folder holding it)")
@click.option("--download", is_flag=True, help="let torchvision download a dataset not found on disk")
@click.option("--arch", default=None, help="trajgen architecture family: cnn, mlp, vit, resnet18, mobilenet_v2, "
              "mobilenet_v3_small, convnext [cnn; paper: resnet18]")
@click.option("--width", type=click.IntRange(1), default=None,
              help="network width (torchvision families: stem channels; resnet18's standard is 64)")
@click.option("--train-size", type=click.IntRange(0), default=None, help="training images (0: the whole training set)")
@click.option("--test-size", type=click.IntRange(0), default=None, help="test images (0: the whole test set)")
@click.option("--val-size", type=click.IntRange(0), default=None,
              help="validation images from the training pool outside the training subset")
@click.option("--epochs", type=click.FloatRange(0, min_open=True), default=None, help="original/retrain epochs")
@click.option("--tuned", default=None, help="tuning record (`invwnn tune` output) or a folder of "
              "<scenario>.json records whose choices to use [the packaged invwnn/bench/tuned/]; "
              "'none': every method's library defaults")
@click.option("--predictor", "predictors", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="predictor checkpoint (`invwnn train`) for the learned invwnn / invwnn+ rows, each row taking "
                   "the one whose window K is its snapshots (repeat for K = 15 and K = 5) [the shipped ones]")
@click.option("--cache-dir", default="data/bench-cache", show_default=True, help="originals and retrained models")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp", is_flag=True, help="bf16 autocast for training passes (CUDA only; metrics and rewinder "
              "predictions stay float32)")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads; 1 is fastest on a shared 2-core machine")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="worker processes (one method on one seed each, one torch thread each)")
@click.option("--references", type=click.IntRange(0), default=4, show_default=True,
              help="reference models for offline RMIA (Retrain and N - 1 more, trained on the retain set and "
                   "cached); 0: no RMIA, JS or five-term gap")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors(InputError, ValueError)
def bench(scenario, methods, seeds, out, quick, dataset, data_root, download, arch, width, train_size, test_size,
          val_size, epochs, tuned, predictors, cache_dir, device, amp, threads, jobs, references, progress):
    """Build SCENARIO, train and cache the original and Retrain, run every method at equal
    forgetting and at its default budget, and write table.md, results.csv, results.json and plots."""
    import torch
    from invwnn.bench import report, runner, scenarios, search

    torch.set_num_threads(threads)
    config = scenarios.scenario_config(scenario, quick, dataset=dataset, data_root=data_root, arch=arch,
                                       width=width, train_size=train_size, test_size=test_size,
                                       val_size=val_size, epochs=epochs)
    n_seeds = seeds or (1 if quick else 3)
    overrides, record = ({}, None) if tuned == "none" else search.load(scenario, tuned)
    bench_config = runner.BenchConfig(methods=tuple(runner.method_names(methods)), seeds=tuple(range(n_seeds)),
                                      cache_dir=cache_dir, device=device, progress=progress,
                                      method_overrides=overrides, jobs=jobs, amp=amp, predictors=tuple(predictors),
                                      references=references)
    if download:
        scenarios.fetch(config)
    out = out or f"results/{scenario}"
    t0 = time.time()
    from tqdm.auto import tqdm
    results = runner.run(config, bench_config, record, log=lambda s: tqdm.write(s, file=sys.stderr))
    results["command"] = _command(click.get_current_context())
    results["wall_seconds"] = time.time() - t0
    results["threads"] = threads
    files = report.write(results, out)
    click.echo(f"{scenario}: {len(files)} files in {out} ({results['wall_seconds']:.0f} s)")


@click.command("tune")
@click.option("--scenario", required=True, help="random10, random50, class, label-noise, overfit or backdoor")
@click.option("--methods", default="all", show_default=True, help="'all' or a comma-separated list")
@click.option("--trials", type=click.IntRange(1), default=None, help="configurations per method [16: invwnn.bench.search.TRIALS]")
@click.option("--seed", type=int, default=None, help="tuning seed, never a reported one [100]")
@click.option("--out", default=None, help="record file [invwnn/bench/tuned/SCENARIO.json]; the Optuna journal "
              "of its trials goes beside it (SCENARIO.optuna.log), and a rerun resumes from it")
@click.option("--quick", is_flag=True, help="the bench's --quick sizes")
@click.option("--width", type=click.IntRange(1), default=None, help="network width")
@click.option("--data-root", default=None, help="folder holding the dataset files")
@click.option("--cache-dir", default="data/bench-cache", show_default=True, help="originals and retrained models")
@click.option("--device", default="cpu", show_default=True)
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="worker processes")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors(InputError, ValueError)
def tune(scenario, methods, trials, seed, out, quick, width, data_root, cache_dir, device, jobs, progress):
    """Search every method's hyperparameters on SCENARIO's validation split (the same number of
    trials for each method, ablation and control) and write the record `invwnn bench` applies."""
    import torch
    from invwnn.bench import runner, scenarios, search

    torch.set_num_threads(1)
    config = scenarios.scenario_config(scenario, quick, width=width, data_root=data_root)
    from tqdm.auto import tqdm
    path = Path(out) if out else search.tuned_path(scenario)
    journal = search.journal_path(path)  # Optuna's studies, beside the record: a rerun resumes them
    record = search.tune(config, tuple(runner.method_names(methods)), trials or search.TRIALS,
                         search.TUNING_SEED if seed is None else seed, cache_dir, device, jobs, progress,
                         log=lambda s: tqdm.write(s, file=sys.stderr), storage=journal)
    record["command"] = _command(click.get_current_context(), "tune")
    path = search.write(record, path)
    click.echo(f"{scenario}: tuned {len(record['methods'])} methods x {record['trials_per_method']} trials "
               f"in {record['wall_seconds']:.0f} s -> {path} (trials: {journal})")


def _list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@click.command("panel")
@click.option("--networks", default=None,
              help="comma list of resnet18, mobilenet_v3_small, convnext, vit_tv (invwnn.bench.panel.NETWORKS) [all]")
@click.option("--scenarios", default=None, help="comma list of class, random10, label-noise [all]")
@click.option("--seeds", type=click.IntRange(1, 100), default=None, help="number of seeds 0..N-1 [3; --quick: 1]")
@click.option("--methods", default="all", show_default=True,
              help="'all' (every registered method but retrain) or a comma list")
@click.option("--settings", default="defaults,tuned", show_default=True,
              help="defaults (library defaults), tuned (the bench's tuned values), or both")
@click.option("--out", default="results/panel", show_default=True, help="output folder (units.jsonl, panel.*)")
@click.option("--cache-dir", default="data/bench-cache", show_default=True, help="originals and retrained models")
@click.option("--data-root", default=None, help="folder holding the Fashion-MNIST files")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads; 1 is fastest on a shared 2-core machine")
@click.option("--quick", is_flag=True, help="the miniature: tiny widths, 300 training images, 200 test images")
@click.option("--references", type=click.IntRange(0), default=0, show_default=True,
              help="reference models for offline RMIA and the five-term gap (Retrain and N - 1 more; each costs "
                   "about a Retrain per network, scenario and seed)")
@click.option("--doc", type=click.Path(exists=True, dir_okay=False), default=None,
              help="also replace this document's '## Architecture panel' section ('... with RMIA' with "
                   "--references; e.g. docs/results.md)")
@click.option("--report-only", is_flag=True,
              help="run nothing: write the tables from the units already in OUT (a panel stopped part-way)")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors(InputError, ValueError)
def panel(networks, scenarios, seeds, methods, settings, out, cache_dir, data_root, device, threads, quick,
          references, doc, report_only, progress):
    """Run the architecture panel (every method, as `invwnn apply` runs it, on torchvision networks
    against Retrain), skipping units already in OUT/units.jsonl, and write panel.md, panel.json and
    panel.png (panel-rmia.* with --references)."""
    import torch
    from tqdm.auto import tqdm
    from invwnn.bench import panel as panel_mod
    from invwnn.bench import panel_report

    torch.set_num_threads(threads)
    config = panel_mod.config_from(
        _list(networks) if networks is not None else None, quick,
        scenarios=_list(scenarios) if scenarios is not None else None,
        seeds=tuple(range(seeds or (1 if quick else 3))),
        methods=panel_mod.METHODS if methods.strip() == "all" else _list(methods), settings=_list(settings),
        cache_dir=cache_dir, data_root=data_root, device=device, references=references)
    t0 = time.time()
    rows = panel_mod.read_units(out) if report_only else \
        panel_mod.run_panel(config, out, progress, log=lambda s: tqdm.write(s, file=sys.stderr))
    files = panel_report.write(config, rows, out, _command(click.get_current_context(), "panel"), doc)
    click.echo(f"panel: {len(panel_mod.plan(config))} units, {len(files)} files in {out} ({time.time() - t0:.0f} s)")
