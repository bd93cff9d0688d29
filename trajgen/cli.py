"""``trajgen`` commands: parse flags, call the library, turn its errors into one-line messages."""
from __future__ import annotations

import json
import sys

import click

from trajgen import collect as collecting
from trajgen import episodes as episoding
from trajgen import info as store_info
from trajgen import migrate as migrating
from trajgen import verify as verifying
from trajgen.cli_errors import OneLineGroup, UserError, user_errors
from trajgen.data import DATASETS, DatasetError
from trajgen.episode_spec import COUNTERFACTUAL_PARENT_STEPS
from trajgen.spec import ALL_ARCHS, ARCHS, OPTIMIZERS, SpecError, parse_choices
from trajgen.store import StoreError, shared_location

input_errors = user_errors(SpecError, StoreError, DatasetError)


@click.group(cls=OneLineGroup)
@click.version_option(package_name="invwnn")
def main() -> None:
    """Record weight trajectories of many small training runs into a Zarr store."""


@main.command()
@click.option("--store", default="data/traj.zarr", show_default=True,
              help="Store to create or resume: a path, file:// or s3:// URL every worker can reach.")
@click.option("--archs", default=",".join(ARCHS), show_default=True, help=f"Comma list of {', '.join(ALL_ARCHS)}.")
@click.option("--optimizers", default=",".join(OPTIMIZERS), show_default=True, help="Comma list to draw from.")
@click.option("--runs", default=500, show_default=True, type=click.IntRange(min=1), help="Runs in the collection.")
@click.option("--seed", default=0, show_default=True, type=int, help="Global seed; run i's spec depends on (seed, i) only.")
@click.option("--steps", default=512, show_default=True, type=click.IntRange(min=1), help="Optimizer steps per run.")
@click.option("--every", default=4, show_default=True, type=click.IntRange(min=1), help="Record all weights every N steps.")
@click.option("--dataset", default="fashion-mnist", show_default=True, type=click.Choice(DATASETS))
@click.option("--data-root", default=None, type=click.Path(),
              help="Folder with the dataset's IDX files or torchvision's CIFAR folder.")
@click.option("--download", is_flag=True, help="Let torchvision download a dataset not found on disk.")
@click.option("--coords", default=0, show_default=True, type=click.IntRange(min=0),
              help="Record a fixed, seeded sample of N coordinates per run (stratified by kind and layer); 0: all.")
@click.option("--width-mult", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Width multiplier of the torchvision families [drawn from 0.125, 0.25, 0.5].")
@click.option("--device", default="cpu", show_default=True, help="Where runs train (cpu, cuda, cuda:1).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="Local dask worker processes (0: train in this process).")
@click.option("--threads-per-worker", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads per worker.")
@click.option("--scheduler", default=None, help="Address of an existing dask scheduler (overrides --workers).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@input_errors
def collect(store, archs, optimizers, runs, seed, steps, every, dataset, data_root, download, coords, width_mult,
            device, workers, threads_per_worker, scheduler, quiet):
    """Train many small nets and stream every weight's history into STORE; rerun to resume."""
    if every > steps:
        raise UserError(f"--every {every} is larger than --steps {steps}")
    config = collecting.CollectConfig(
        store=store, archs=parse_choices("architecture", archs, ALL_ARCHS),
        optimizers=parse_choices("optimizer", optimizers, OPTIMIZERS), runs=runs, seed=seed,
        steps=steps, every=every, dataset=dataset, data_root=data_root, coords=coords,
        width_mult=width_mult, download=download, device=device, workers=workers,
        threads_per_worker=threads_per_worker, scheduler=scheduler, progress=not quiet)
    result = collecting.collect(config)
    click.echo(f"{result['store']}: trained {result['trained']} runs, skipped {result['skipped']} "
               f"already complete, in {result['seconds']:.1f} s")


def _episode_options(default_store: str, default_runs: int, per_parent: bool = True,
                     parent_steps: int = episoding.PARENT_STEPS):
    """The options ``episodes``, ``twins`` and ``counterfactuals`` share."""
    options = [
        click.option("--store", default=default_store, show_default=True,
                     help="Store to create or resume: a path, file:// or s3:// URL every worker can reach."),
        click.option("--runs", default=default_runs, show_default=True, type=click.IntRange(min=1),
                     help="Episodes in the collection."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Global seed; episode i's spec depends on (seed, i) only."),
        *([click.option("--per-parent", default=4, show_default=True, type=click.IntRange(min=1),
                        help="Episodes fine-tuned from each trained parent.")] if per_parent else []),
        click.option("--parent-steps", default=parent_steps, show_default=True,
                     type=click.IntRange(min=1), help="Training steps of each parent."),
        click.option("--dataset", default="fashion-mnist", show_default=True, type=click.Choice(DATASETS)),
        click.option("--data-root", default=None, type=click.Path(), help="Folder with the dataset's IDX files."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0),
                     help="Local dask worker processes (0: train in this process)."),
        click.option("--threads-per-worker", default=1, show_default=True, type=click.IntRange(min=1),
                     help="torch threads per worker."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        input_errors,
    ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _collect_episodes(twins: bool, quiet: bool, counterfactuals: bool = False, **flags) -> None:
    shared_location(flags["store"], in_process="")  # written by dask workers whatever --workers says
    config = episoding.EpisodeConfig(**flags, twins=twins, counterfactuals=counterfactuals, progress=not quiet)
    result = episoding.collect_episodes(config)
    what = "triples" if counterfactuals else "twins" if twins else "episodes"
    click.echo(f"{result['store']}: wrote {result['trained']} {what}, "
               f"skipped {result['skipped']} already complete, in {result['seconds']:.1f} s")


@main.command()
@_episode_options("data/episodes.zarr", 100)
def episodes(**flags):
    """Fine-tune trained parents on small subsets, recording every weight every step, into STORE
    (runs of kind "episode"); rerun to resume."""
    _collect_episodes(False, **flags)


@main.command()
@_episode_options("data/twins.zarr", 48)
def twins(**flags):
    """Counterfactual twins: for each episode, also train its parent's twin from the same initial
    weights and batch order minus the episode's subset S, and store the twin's final weights beside
    the original's fine-tuning on S (runs of kind "twin"); rerun to resume."""
    _collect_episodes(True, **flags)


@main.command()
@_episode_options("data/counterfactuals.zarr", 300, per_parent=False,
                  parent_steps=COUNTERFACTUAL_PARENT_STEPS)
def counterfactuals(**flags):
    """Counterfactual triples for meta-training a rewinder: (parent, S, the parent's training
    without S) with a parent of its own per triple, trained to a near-memorised pool, S by each of
    the bench's six rules and families mlp, cnn, vit and convnext in turn (runs of kind "twin",
    a short window on S); rerun to resume."""
    _collect_episodes(True, counterfactuals=True, **flags)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@input_errors
def info(store, as_json):
    """Summarise the runs in STORE."""
    d = store_info.describe(store)
    click.echo(json.dumps(d, indent=2) if as_json else store_info.format_description(d))


@main.command()
@click.argument("store")
@click.option("--repair", is_flag=True, help="Mark damaged runs incomplete; make the index list the valid complete runs.")
@input_errors
def verify(store, repair):
    """Check every run of STORE against the schema, reading every chunk; exit 1 if anything was
    wrong. --repair marks runs with problems incomplete (rerun the same collect command to retrain
    them) and fixes the index; it never deletes a run."""
    report = verifying.verify(store, repair=repair)
    for line in report.problems:
        click.echo(f"problem: {line}")
    for line in report.repaired:
        click.echo(f"repaired: {line}")
    click.echo(f"{store}: {report.runs_checked} complete runs checked, {len(report.problems)} problems")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("old")
@click.argument("new")
@input_errors
def migrate(old, new):
    """Copy the complete runs of store OLD (schema 1 or 2) into a schema-2 store NEW, values bit for
    bit; OLD is only read. Rerun the same command to resume."""
    r = migrating.migrate(old, new)
    click.echo(f"{r['new']}: copied {r['copied']} runs from {r['old']} (schema {r['old_version']}), "
               f"skipped {r['skipped']} already there")


if __name__ == "__main__":
    sys.exit(main())
