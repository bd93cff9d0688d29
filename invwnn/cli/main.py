"""``invwnn`` commands: parse flags, call the library, turn its errors into one-line messages."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trajgen.cli_errors import OneLineGroup, UserError, user_errors
from trajgen.data import DatasetError
from trajgen.nets import KINDS
from trajgen.spec import ALL_ARCHS, SpecError, parse_choices
from trajgen.store import StoreError, probe_writable
from invwnn.train import fit
from invwnn.train.fit import TrainConfig
from invwnn.train.meta_train import MetaTrainConfig, run as meta_train_run
from invwnn.train.evaluate import evaluate_checkpoint
from invwnn.errors import InputError
from invwnn.cli.apply import apply, audit, prepare, report
from invwnn.cli.bench import bench, panel, tune
from invwnn.rewind import inspect as inspect_checkpoint
from invwnn.rewind.features import CONTEXTS
from invwnn.rewind.predictor import format_evaluation
from invwnn.train.windows import WindowError

input_errors = user_errors(SpecError, StoreError, WindowError, InputError)


def check_output(path: Path) -> None:
    """Fail before training, not after, if the checkpoint cannot be written at ``path``."""
    if path.is_dir():
        raise UserError(f"--out {path} is a directory")
    probe_writable(path.parent)  # the checkpoint is written beside itself, then renamed


@click.group(cls=OneLineGroup)
@click.version_option(package_name="invwnn")
def main() -> None:
    """Learning to rewind: train the past-weight predictor, unlearn with it, compare methods."""


@main.command()
@click.option("--store", default=TrainConfig.store, show_default=True, help="trajgen store to read windows from.")
@click.option("--out", default=TrainConfig.out, show_default=True, help="Checkpoint to write (atomically).")
@click.option("--window", "k", default=TrainConfig.k, show_default=True, type=click.IntRange(min=2), help="K: snapshots per window.")
@click.option("--back", "u", default=TrainConfig.u, show_default=True, type=click.IntRange(min=1), help="U: snapshots before the window to predict.")
@click.option("--kinds", default=",".join(KINDS), show_default=True, help=f"Comma list of parameter kinds ({', '.join(KINDS)}).")
@click.option("--width", default=TrainConfig.width, show_default=True, type=click.IntRange(min=2), help="Hidden units per stream layer.")
@click.option("--kind-dim", default=TrainConfig.kind_dim, show_default=True, type=click.IntRange(min=0), help="Kind embedding size (0: kind-agnostic).")
@click.option("--clip", default=TrainConfig.clip, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Bound of the normalised residual.")
@click.option("--steps", default=TrainConfig.steps, show_default=True, type=click.IntRange(min=1), help="Optimizer steps.")
@click.option("--max-windows", default=None, type=click.IntRange(min=1), help="Stop after about this many training windows.")
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Peak AdamW learning rate (cosine decay).")
@click.option("--val-fraction", default=TrainConfig.val_fraction, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Share of runs held out (whole runs).")
@click.option("--val-archs", default="", help=f"Hold out every run of these architectures ({', '.join(ALL_ARCHS)}) instead.")
@click.option("--target", default=TrainConfig.target, show_default=True, type=click.Choice(["past", "counterfactual"]),
              help="past: the weight U snapshots before the window; counterfactual: a twin store's weights "
                   "of the model trained without the fine-tuning data (`trajgen twins`).")
@click.option("--max-start", default=None, type=click.IntRange(min=0),
              help="Latest window start, in snapshots (the applier's windows start a fine-tuning).")
@click.option("--context", default="", help="Comma list of extra inputs: step (optimizer family and lr), "
                                             "layer (the coordinate's layer over the same window).")
@click.option("--init", default=None, type=click.Path(dir_okay=False),
              help="Start from this checkpoint's weights (same window, width, kinds and context).")
@click.option("--eval-per-kind", default=TrainConfig.eval_per_kind, show_default=True, type=click.IntRange(min=1), help="Held-out windows per kind per run.")
@click.option("--workers", default=TrainConfig.workers, show_default=True, type=click.IntRange(min=0), help="Loader worker processes.")
@click.option("--threads", default=TrainConfig.threads, show_default=True, type=click.IntRange(min=1), help="torch threads for training.")
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=int)
@click.option("--device", default=TrainConfig.device, show_default=True, help="torch device for training.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@input_errors
def train(kinds, val_archs, context, max_windows, quiet, **settings):
    """Train the past-weight predictor on STORE's runs; print held-out errors; write --out."""
    check_output(Path(settings["out"]))
    if max_windows is not None:
        settings["steps"] = min(settings["steps"], max(1, max_windows // settings["batch_size"]))
    config = TrainConfig(
        kinds=parse_choices("parameter kind", kinds, KINDS), **settings,
        val_archs=parse_choices("architecture", val_archs, ALL_ARCHS) if val_archs else (),
        context=parse_choices("context", context, tuple(CONTEXTS)) if context else ())
    result = fit.train(config, progress=not quiet)
    click.echo(format_evaluation(result["evaluation"]))
    p = result["provenance"]
    click.echo(f"{config.out}: {p['train_runs']} training runs, {p['windows_seen']:,} windows in {p['train_seconds']} s "
               f"(final validation error reached after {p['seconds_to_final_val']} s)")


@main.command("meta-train")
@click.option("--store", default=MetaTrainConfig.store, show_default=True,
              help="Store of counterfactual triples (trajgen counterfactuals).")
@click.option("--out", default=MetaTrainConfig.out, show_default=True, help="Checkpoint to write (atomically).")
@click.option("--steps", default=MetaTrainConfig.steps, show_default=True, type=click.IntRange(min=1), help="Meta-training steps (one triple each).")
@click.option("--lr", default=MetaTrainConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate of the rewinder.")
@click.option("--window", "k", default=MetaTrainConfig.k, show_default=True, type=click.IntRange(min=2), help="K: snapshots per window.")
@click.option("--width", default=MetaTrainConfig.width, show_default=True, type=click.IntRange(min=1), help="Hidden units of the correction.")
@click.option("--context", default="", show_default=True, type=click.Choice(["", "layer"]),
              help="Inputs beyond the coordinate's window: layer = its span among its layer's and the layer's mean move.")
@click.option("--holdout-archs", default="convnext", show_default=True,
              help="Families held out entirely (the evaluation's unseen family); empty: none.")
@click.option("--holdout-every", default=MetaTrainConfig.holdout_every, show_default=True, type=click.IntRange(min=2),
              help="Hold out every n-th parent of the other families.")
@click.option("--first", default=None, type=click.IntRange(min=1),
              help="Only triples of index below this (the same data while a collection grows).")
@click.option("--eval-triples", default=MetaTrainConfig.eval_triples, show_default=True, type=click.IntRange(min=1),
              help="Triples per held-out set, and for tuning the line.")
@click.option("--lead", default=MetaTrainConfig.lead, show_default=True, type=click.IntRange(min=0),
              help="Up to this many loop iterations run as data before the one the gradient goes through.")
@click.option("--unrolled", default=MetaTrainConfig.unrolled, show_default=True, type=click.IntRange(min=1),
              help="Loop iterations the gradient goes through (straight through each forget window).")
@click.option("--iterations", default=MetaTrainConfig.iterations, show_default=True, type=click.IntRange(min=1),
              help="Loop iterations before the distance is measured (tuning the line, evaluating).")
@click.option("--data-root", default=None, type=click.Path(), help="Folder with the dataset's IDX files.")
@click.option("--threads", default=MetaTrainConfig.threads, show_default=True, type=click.IntRange(min=1), help="torch threads.")
@click.option("--seed", default=MetaTrainConfig.seed, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors(InputError, DatasetError, SpecError, StoreError)
def meta_train(context, holdout_archs, quiet, **settings):
    """Train the rewinder on the unlearning objective itself: unroll --unrolled iterations of the
    invwnn+ loop (and of the forget-only loop) on each triple of STORE and minimise the unlearned model's
    KL to the counterfactual; then compare it on held-out parents and a held-out family with the
    tuned line, reset and the regression predictor; write --out."""
    check_output(Path(settings["out"]))
    archs = parse_choices("architecture", holdout_archs, ALL_ARCHS) if holdout_archs else ()
    config = MetaTrainConfig(context=(context,) if context else (), holdout_archs=archs, **settings)
    record = meta_train_run(config, progress=not quiet, log=click.echo)
    t = record["training"]
    click.echo(f"{config.out}: {record['data']['triples']['train']} training triples, {t['steps']} steps in {t['seconds']} s; "
               f"objective {t['objective_first']:.4f} -> {t['objective_last']:.4f}")


@main.command()
@click.argument("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@input_errors
def inspect(checkpoint, as_json):
    """Print CHECKPOINT's config, held-out evaluation and provenance (a predictor of invwnn train or
    a rewinder of invwnn meta-train)."""
    click.echo(inspect_checkpoint(checkpoint, as_json))


@main.command()
@click.argument("checkpoint")
@click.option("--store", default="data/traj.zarr", show_default=True,
              help="trajgen store holding the checkpoint's held-out and horizon-fit runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--write", is_flag=True, help="Replace CHECKPOINT's evaluation record (atomically; weights untouched).")
@click.option("--split-from", default=None,
              help="Evaluate on the held-out and horizon-fit runs (and windows) of this other checkpoint.")
@input_errors
def evaluate(checkpoint, store, as_json, write, split_from):
    """Recompute CHECKPOINT's held-out evaluation from STORE's runs and print it."""
    if write and split_from:
        raise UserError("--write keeps a checkpoint's own evaluation; it cannot be combined with --split-from")
    record = evaluate_checkpoint(checkpoint, store, write=write, split_from=split_from)
    click.echo(json.dumps(record, indent=2) if as_json else format_evaluation(record))
    if write and not as_json:
        click.echo(f"{checkpoint}: evaluation record rewritten")


main.add_command(prepare)
main.add_command(apply)
main.add_command(report)
main.add_command(audit)
main.add_command(bench)
main.add_command(tune)
main.add_command(panel)

if __name__ == "__main__":
    sys.exit(main())
