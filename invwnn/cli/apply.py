"""``invwnn apply``, ``audit``, ``report`` and ``prepare``: parse flags, call the library, turn bad
input into one line and exit code 2. Method flags are generated from the methods' config dataclasses."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import click

from invwnn.unlearn.apply import AUTO, DEFAULT_MAX_DROP, Inputs, choose_method, format_report, unlearn
from invwnn.unlearn.methods import REGISTRY
from invwnn.errors import InputError
from invwnn.inputs.prepare import PrepareConfig, prepare as prepare_original
from trajgen.cli_errors import UserError, user_errors
from trajgen.data import DATASETS, DatasetError
from trajgen.spec import SpecError


input_errors = user_errors(InputError, DatasetError, SpecError)


def _base_type(tp):
    """``float | None`` -> float: the type click should parse a config field's flag as."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _with_method_flags(fn):
    """One flag per config field of any method, with each method's help text and default."""
    flags: dict[str, dict] = {}
    for name, method in REGISTRY.items():
        hints = typing.get_type_hints(method.config)
        for f in dataclasses.fields(method.config):
            choices = f.metadata.get("choices")
            entry = flags.setdefault(f.name, {"type": click.Choice(choices) if choices else _base_type(hints[f.name]),
                                              "help": [], "defaults": {}})
            if f.metadata.get("help") and f.metadata["help"] not in entry["help"]:
                entry["help"].append(f.metadata["help"])
            entry["defaults"][name] = f.default
    for field, entry in reversed(sorted(flags.items())):
        defaults = ", ".join(f"{m}={d}" for m, d in entry["defaults"].items())
        fn = click.option(f"--{field.replace('_', '-')}", field, type=entry["type"], default=None,
                          help=f"{'; '.join(entry['help'])}. Defaults: {defaults}.")(fn)
    return fn


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _max_drop(text: str) -> float | None:
    """``--max-drop``: points (the library refuses negative ones), or off / none (no bound)."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--max-drop takes a number of points >= 0 or off, got {text!r}") from None


_INPUT_FLAGS = [
    click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
                 help="Model file: the project's format, a torch.export .pt2 (a fixed batch size runs as "
                      "micro-batches), TorchScript, safetensors weights (with --arch), or (with "
                      "--trust-pickle) a pickled nn.Module."),
    click.option("--arch", help="Architecture of safetensors weights: torchvision:NAME[:key=value,...], e.g. "
                                "torchvision:resnet18:num_classes=10 (values: ints, floats, true/false, strings)."),
    click.option("--forget", "forget_path", required=True, type=click.Path(),
                 help="Data to forget: ImageFolder DIR (DIR/<class name>/*.png) or tensor file (x, y)."),
    click.option("--retain", "retain_path", type=click.Path(), help="Retain data (same formats)."),
    click.option("--test", "test_path", type=click.Path(), help="Test data (same formats)."),
    click.option("--trust-pickle", is_flag=True, help="Allow loading a pickled nn.Module (runs code from the file)."),
    click.option("--classes", help="Comma-separated class names, for model files that record none."),
    click.option("--size", help="HxW input size (e.g. 28x28), for model files that record no preprocessing."),
    click.option("--channels", type=click.IntRange(min=1), help="Input channels, for files without preprocessing."),
    click.option("--mean", help="Per-channel mean(s) after scaling to [0, 1], comma-separated."),
    click.option("--std", help="Per-channel std(s), comma-separated."),
]


def input_flags(fn):
    """The flags that say where the model and data are and how to read them (apply, audit)."""
    for flag in reversed(_INPUT_FLAGS):
        fn = flag(fn)
    return fn


def inputs_from(model_path, arch, forget_path, retain_path, test_path, trust_pickle, classes, size, channels,
                mean, std, **rest) -> tuple[Inputs, dict]:
    """:class:`Inputs` from the values of :func:`input_flags`, and the command's other values."""
    hw = None
    if size is not None:
        try:
            hw = tuple(int(v) for v in size.lower().split("x"))
            assert len(hw) == 2
        except (ValueError, AssertionError):
            raise UserError(f"--size takes HxW, e.g. 28x28, got {size!r}") from None
    return Inputs(model_path, forget_path, retain_path, test_path, trust_pickle,
                  tuple(c.strip() for c in classes.split(",")) if classes else None, hw, channels,
                  _floats(mean, "--mean"), _floats(std, "--std"), arch), rest


@click.command("apply")
@input_flags
@click.option("--method", default=AUTO, show_default=True, type=click.Choice([AUTO, *REGISTRY]),
              help="auto: invwnn+ with --retain (the retain-aware loop), else invwnn (forget data only).")
@click.option("--out", type=click.Path(dir_okay=False), help="Unlearned model [default: beside the input, M.unlearned.EXT].")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="JSON report [default: the output's name with .json].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice; recorded in the report.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--max-drop", default=f"{DEFAULT_MAX_DROP:g}", show_default=True,
              help="Guard: stop the method once accuracy on 512 retain images (test images without "
                   "--retain) falls more than this many points below its value before unlearning, and "
                   "keep the last weights within the bound; off: no bound (non-finite weights still stop it).")
@click.option("--retrain-epochs", type=click.FloatRange(min=0, min_open=True),
              help="Epochs a retraining on --retain would take, for the report's cost comparison "
                   "[default: the recipe the model file records].")
@click.option("--quiet", is_flag=True, help="No progress bars; one summary line instead of the table.")
@_with_method_flags
@input_errors
def apply(method, out, report_path, seed, device, max_drop, retrain_epochs, quiet, **flags):
    """Remove the influence of the FORGET images from MODEL; write the unlearned model (in MODEL's
    format) and a JSON report (metrics before/after, per-iteration log, config, seed, versions)."""
    inputs, method_opts = inputs_from(**flags)
    method, why = choose_method(method, inputs)
    given = {k: v for k, v in method_opts.items() if v is not None}
    valid = {f.name for f in dataclasses.fields(REGISTRY[method].config)}
    wrong = sorted(set(given) - valid)
    if wrong:
        raise UserError(f"--{wrong[0].replace('_', '-')} is not a setting of method {method}; "
                        f"its settings: {', '.join('--' + v.replace('_', '-') for v in sorted(valid))}")
    bound = _max_drop(max_drop)
    report = unlearn(inputs, method, given, out=out, report_path=report_path, seed=seed, device=device, progress=not quiet, max_drop=bound,
                     retrain_epochs=retrain_epochs, warn=lambda text: click.echo(f"warning: {text}", err=True))
    if not quiet:
        click.echo(format_report(report))
    if why:
        click.echo(f"method: {method} ({why})")
    b, a = report["before"], report["after"]
    shown = " ".join(f"{k} {b[k]:.1f}->{a[k]:.1f}" for k in ("UA", "RA", "TA", "MIA") if k in a)
    inexact = f"; inexact: {len(report['inexact'])} note(s) in the report" if report["inexact"] else ""
    click.echo(f"{report['output']}: {method} in {report['seconds']:.1f} s, stopped: "
               f"{report['stop_reason']}; {shown}{inexact}")


@click.command("audit")
@input_flags
@click.option("--references", default=4, show_default=True, type=click.IntRange(min=2),
              help="Reference models to train on --retain (the first is the yardstick, scored against the others).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True),
              help="References' epochs [default: the model file's recorded recipe, else 20].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="References' Adam step [recorded, else 1e-3].")
@click.option("--batch-size", type=click.IntRange(min=1), help="References' batch size [recorded, else 128].")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="JSON report [default: beside the model, M.audit.json].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the first reference and of the attack.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress bar; the verdict line only.")
@input_errors
def audit(references, epochs, lr, batch_size, report_path, seed, device, quiet, **flags):
    """Membership inference (offline RMIA) on the FORGET images against models trained without them:
    train --references models of MODEL's architecture on --retain, compare forget images with
    held-out --test images of their classes, and say whether MODEL tells them apart more than a
    model that never saw them."""
    from invwnn.audit.verdict import AuditConfig, audit as run_audit, format_audit

    inputs, _ = inputs_from(**flags)
    config = AuditConfig(references=references, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         device=device)
    report = run_audit(inputs, config, report_path=report_path, progress=not quiet,
                       warn=lambda text: click.echo(f"warning: {text}", err=True))
    click.echo(report["verdict"] if quiet else format_audit(report))


@click.command("report")
@click.argument("path", type=click.Path(dir_okay=False))
@input_errors
def report(path):
    """Print the before / after table of an ``invwnn apply`` report (the JSON file at PATH)."""
    try:
        data = json.loads(Path(path).read_text())
        text = format_report(data)
    except FileNotFoundError:
        raise UserError(f"report {path} does not exist") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is not an invwnn apply report ({type(err).__name__}: {err})") from None
    click.echo(text)


@click.command("prepare")
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for model.pt, forget/, retain/, test/ and split.json.")
@click.option("--dataset", default="fashion-mnist", show_default=True, type=click.Choice(DATASETS))
@click.option("--data-root", type=click.Path(), help="Folder with the dataset's IDX files.")
@click.option("--train-size", default=PrepareConfig.train_size, show_default=True, type=click.IntRange(min=1),
              help="Training images (a seeded subset).")
@click.option("--test-size", default=PrepareConfig.test_size, show_default=True, type=click.IntRange(min=1))
@click.option("--width", default=PrepareConfig.width, show_default=True, type=click.IntRange(min=1), help="CNN base channels.")
@click.option("--depth", default=PrepareConfig.depth, show_default=True, type=click.IntRange(min=1), help="CNN conv blocks.")
@click.option("--epochs", default=PrepareConfig.epochs, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--lr", default=PrepareConfig.lr, show_default=True, type=float, help="Adam learning rate.")
@click.option("--batch-size", default=PrepareConfig.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--forget", "forget_mode", default="random", show_default=True, type=click.Choice(["random", "classes"]))
@click.option("--forget-fraction", default=PrepareConfig.forget_fraction, show_default=True, type=float,
              help="Share of the training images to forget (--forget random).")
@click.option("--forget-classes", default="", help="Comma-separated class names to forget (--forget classes).")
@click.option("--mnemonic-mix", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Train with mnemonic codes: probability of swapping an image for its class code.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@input_errors
def prepare(out, forget_mode, forget_classes, device, quiet, **settings):
    """Train an original classifier and write forget/retain/test ImageFolder splits into OUT."""
    config = PrepareConfig(forget=forget_mode, **settings,
                           forget_classes=tuple(c.strip() for c in forget_classes.split(",") if c.strip()))
    summary = prepare_original(out, config, device=device, progress=not quiet)
    o = summary["original"]
    click.echo(f"{out}/model.pt: RA {o['RA']:.1f} UA {o['UA']:.1f} TA {o['TA']:.1f} MIA {o['MIA']:.1f}; "
               f"forget {summary['sizes']['forget']}, retain {summary['sizes']['retain']}, "
               f"test {summary['sizes']['test']} images in {summary['seconds']:.0f} s")
