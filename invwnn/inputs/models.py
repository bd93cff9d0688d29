"""User model files in and out, behind one wrapper every method sees.

Formats read (detected from the archive's contents, not the file name):
- the project's own format: a dict of plain tensors, strings and numbers written by :func:`save_own`
  (architecture spec, state_dict, class names, preprocessing, optional mnemonic codes, training
  config, versions); loaded with ``weights_only=True``;
- ``torch.export`` archives (.pt2) and TorchScript archives; class names and preprocessing come from
  an ``invwnn.json`` extra file when present (this project writes one), else from flags/defaults.
  An exported program whose batch dimension is fixed (exported without dynamic shapes) runs any
  batch as micro-batches of its exported size (:class:`Normalized` ``micro_batch``);
- safetensors weights of a torchvision architecture named by ``arch="torchvision:NAME[:k=v,...]"``
  (:func:`parse_arch`), read without unpickling anything; the file's ``invwnn`` metadata (this
  project writes it) records the architecture, class names and preprocessing;
- a full pickled ``nn.Module``, only when the caller passes ``trust_pickle=True``.

The unlearned model is written back in the format it came in, atomically (temp file, then
``os.replace``), so a failed run never leaves a half-written file.
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from invwnn.errors import InputError, first_line
from invwnn.files import atomic_write, versions
from invwnn.inputs.archs import TorchvisionArch, build_torchvision, check_state_dict, param_kinds, parse_arch
from invwnn.inputs.exported import bounded_batch, expected_input
from invwnn.inputs.preprocess import Normalized, Preprocess, PreprocessHint
from trajgen import nets
from trajgen.spec import ArchSpec, SpecError

FORMAT = "invwnn-model"
FORMAT_VERSION = 1
EXTRA_FILE = "invwnn.json"  # metadata carried inside .pt2 / TorchScript archives
SAFETENSORS_KEY = "invwnn"  # safetensors metadata entry holding the same JSON as EXTRA_FILE


@dataclass
class LoadedModel:
    """A classifier ready for unlearning. ``model`` maps float images in [0, 1] of shape
    ``(N, *preprocess.shape)`` to logits ``(N, len(classes))``. ``kinds`` holds the parameter kind of
    every trainable parameter (by name in ``model``), inferred also for exported graphs whose modules
    lost their types. ``source`` is one of own, export, torchscript, pickle."""

    model: Normalized
    classes: tuple[str, ...]
    preprocess: Preprocess
    source: str
    arch: dict | None = None
    mnemonic: torch.Tensor | None = None  # (n_classes, C, H, W) in [0, 1]
    train_config: dict = field(default_factory=dict)
    exported: Any = None  # the ExportedProgram whose state_dict shares storage with model.net
    classes_from_file: bool = True
    torchvision: str | None = None
    inexact: tuple[str, ...] = ()
    preprocess_guess: str | None = None  # what was assumed of the inputs (PreprocessHint.guessed)

    @property
    def net(self) -> nn.Module:
        return self.model.net

    @property
    def micro_batch(self) -> int | None:
        """The most images the net takes in one call (None: any number)."""
        return self.model.micro_batch

    @property
    def can_rebuild(self) -> bool:
        """Whether :meth:`rebuild` can make a fresh network (retrain needs one)."""
        return self.arch is not None or self.torchvision is not None or self.source == "pickle"

    def kinds(self) -> dict[str, str]:
        return param_kinds(self.model)

    def rebuild(self) -> nn.Module:
        """A freshly initialised copy of the architecture (for retraining), wrapped like ``model``."""
        if self.arch is not None:
            net = nets.build(ArchSpec(**self.arch), self.preprocess.shape, len(self.classes))
        elif self.torchvision is not None:
            net = build_torchvision(parse_arch(self.torchvision))
        else:
            import copy
            net = copy.deepcopy(self.net)
            resettable = [m for m in net.modules() if hasattr(m, "reset_parameters")]
            if not resettable or self.source in ("export", "torchscript"):
                raise InputError(f"retrain needs the model's architecture, which a {self.source} "
                                 "file does not give; use a model in the project's own format")
            for m in resettable:
                m.reset_parameters()
        return Normalized(net, self.preprocess)


def save_own(path: str | Path, net: nn.Module, arch: ArchSpec | dict, classes: tuple[str, ...],
             preprocess: Preprocess, train_config: dict | None = None,
             mnemonic: torch.Tensor | None = None) -> None:
    """Write ``net`` in the project's own format: plain containers only, so ``torch.load(...,
    weights_only=True)`` reads it."""
    arch_d = asdict(arch) if isinstance(arch, ArchSpec) else dict(arch)
    blob = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch_d,
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "classes": list(classes), "preprocess": preprocess.to_dict(),
            "train_config": json.dumps(train_config or {}, sort_keys=True),
            "versions": versions()}
    if mnemonic is not None:
        blob["mnemonic"] = mnemonic.detach().cpu().float().clone()
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def _archive_kind(path: Path) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        with open(path, "rb") as f:
            head = f.read(9)
        if not head:
            raise InputError(f"model file {path} is empty (zero bytes)") from None
        if head[:4] == b"PK\x03\x04":  # a zip archive whose directory, at its end, is gone
            raise InputError(f"{path} is a truncated or damaged archive (copy it again)") from None
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, JSON header
            return "safetensors"
        if not head.startswith(b"\x80"):  # every pickle since protocol 2 starts with PROTO
            raise InputError(f"{path} is not a model file (neither a zip archive nor a pickle, nor "
                             "safetensors)") from None
        return "pickle"  # legacy (non-zip) torch.save, or a pickle
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch.save"


def _check_finite(model: nn.Module, path: Path) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(f"{path}: weights are not finite (NaN or inf in {name})")


def _n_outputs(net: nn.Module, pre: Preprocess) -> int:
    with torch.no_grad():
        out = net(torch.zeros(2, *pre.shape))
    if out.ndim != 2:
        raise InputError(f"model output has shape {tuple(out.shape)}; need (batch, classes) logits")
    return out.shape[1]


def _own(path: Path, blob: dict) -> LoadedModel:
    if blob.get("format") != FORMAT:
        raise InputError(f"{path} is a torch file but not a model (no {FORMAT!r} format tag)")
    if blob.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} has model format version {blob.get('format_version')}; this "
                         f"invwnn reads version {FORMAT_VERSION}")
    try:
        pre = Preprocess.from_dict(blob["preprocess"])
        classes = tuple(blob["classes"])
        net = nets.build(ArchSpec(**blob["arch"]), pre.shape, len(classes))
    except (KeyError, TypeError, SpecError) as err:
        raise InputError(f"{path}: the model file's arch, classes or preprocess entry is missing or "
                         f"malformed ({type(err).__name__}: {err})") from None
    check_state_dict(path, blob.get("state_dict"), net.state_dict())
    net.load_state_dict(blob["state_dict"])
    mnemonic = blob.get("mnemonic")
    codes_shape = (len(classes), *pre.shape)
    if mnemonic is not None and not (torch.is_tensor(mnemonic) and mnemonic.is_floating_point()
                                     and mnemonic.shape == codes_shape):
        raise InputError(f"{path}: mnemonic codes must be a float tensor of shape {codes_shape} "
                         "(one image per class)")
    return LoadedModel(Normalized(net, pre), classes, pre, "own", arch=dict(blob["arch"]),
                       mnemonic=mnemonic, train_config=json.loads(blob.get("train_config", "{}")))


def _safetensors(path: Path, arch_flag: str | None) -> tuple[nn.Module, dict, TorchvisionArch]:
    """Build the torchvision architecture (``arch_flag``, else the one the file's metadata records)
    and load the file's tensors into it, strictly. Returns the net, the metadata, the architecture."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(SAFETENSORS_KEY, "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path} is not a readable safetensors file ({first_line(err)})") from None
    spec = arch_flag or meta.get("torchvision")
    if spec is None:
        raise InputError(f"{path} holds weights only: name their architecture with --arch "
                         "torchvision:NAME[:key=value,...], e.g. torchvision:resnet18:num_classes=10")
    arch = parse_arch(spec)
    net = build_torchvision(arch)
    try:
        check_state_dict(path, tensors, net.state_dict(),
                          f"--arch {arch.spec}" if arch_flag else f"its recorded architecture {arch.spec}")
    except InputError as err:
        raise InputError(f"{err}; a modified architecture (e.g. another first convolution) cannot be "
                         "rebuilt from torchvision: save the model as TorchScript or torch.export (.pt2), "
                         "which carry their architecture") from None
    net.load_state_dict(tensors)
    return net.eval(), meta, arch


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's deprecation warning on every TorchScript call: the format is one users bring,
    and the warning is addressed to its writers, not to this tool's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _unpickle(path: Path) -> Any:
    """A pickled whole model (the caller checked --trust-pickle). A class that lived in the script
    that saved it (``__main__``) or in a module not importable here cannot be rebuilt: say what to
    save instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as err:
        found = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(err))
        script = found is not None and found.group(2).endswith("__main__")  # pytest's shows as pytest.__main__
        what = (f"class {found.group(1)}" + ("" if script else f" of module {found.group(2)}") if found
                else f"module {getattr(err, 'name', None) or str(err)}")
        where = "the script that saved it (__main__)" if script else "a module not importable here"
        raise InputError(f"{path} pickles {what}, defined in {where}, so it cannot be rebuilt; save the "
                         "model as TorchScript (torch.jit.script(model).save(PATH)) or torch.export "
                         "(torch.export.save(torch.export.export(model, (example,)), PATH.pt2)), or put "
                         "its class in an importable module") from None


def load(path: str | Path, *, trust_pickle: bool = False, classes: tuple[str, ...] | None = None,
         preprocess: Preprocess | PreprocessHint | None = None, arch: str | None = None) -> LoadedModel:
    """Read any supported model file. ``classes`` and ``preprocess`` are used only when the file has
    none; missing preprocessing must be given (a :class:`Preprocess`, or a :class:`PreprocessHint`
    completed from the model's own input shape) and class names default to ``"0"``, ``"1"``, ...
    (so folders named by index map correctly). ``arch`` (``torchvision:NAME[:k=v,...]``) names the
    architecture of safetensors weights, and is refused for every other format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    kind = _archive_kind(path)
    if arch is not None and kind != "safetensors":
        what = {"export": "an exported program", "torchscript": "a TorchScript archive"}.get(kind, "a torch file")
        raise InputError(f"--arch is for safetensors weights; {path} is {what}, which carries its own "
                         "architecture")
    meta: dict = {}
    exported = None
    tv_arch = None
    try:
        if kind == "export":
            extra = {EXTRA_FILE: ""}
            exported = torch.export.load(str(path), extra_files=extra)
            meta = json.loads(extra[EXTRA_FILE] or "{}")
            net = exported.module()
        elif kind == "torchscript":
            extra = {EXTRA_FILE: ""}
            with quiet_torchscript():
                net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            raw = extra[EXTRA_FILE]
            meta = json.loads((raw.decode() if isinstance(raw, bytes) else raw) or "{}")
        elif kind == "safetensors":
            net, meta, tv_arch = _safetensors(path, arch)
        else:
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                if not trust_pickle:
                    raise InputError(f"{path} holds pickled Python objects (a full nn.Module?); "
                                     "loading it runs arbitrary code: pass --trust-pickle if you "
                                     "trust its source") from None
                blob = _unpickle(path)
            if isinstance(blob, dict):
                loaded = _own(path, blob)
                _check_finite(loaded.model, path)
                return loaded
            if not isinstance(blob, nn.Module):
                raise InputError(f"{path} holds a {type(blob).__name__}, not a model")
            net, kind = blob, "pickle"
    except InputError:
        raise
    except Exception as err:  # any reader failure means "not a model we can read"
        raise InputError(f"{path} is not a readable model file ({first_line(err)})") from None
    expected = expected_input(net, exported)
    guess = None
    if "preprocess" in meta:
        try:
            preprocess = Preprocess.from_dict(meta["preprocess"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{path}: its recorded preprocessing is malformed ({type(err).__name__}: "
                             f"{err})") from None
    elif isinstance(preprocess, PreprocessHint):
        hint, preprocess = preprocess, preprocess.resolve(expected)
        guess = hint.guessed(expected) if preprocess is not None else None
    if preprocess is None:
        raise InputError(f"{path} records no preprocessing; pass --size HxW and --channels C")
    batches, inexact = (None, None), ()
    if exported is not None:
        batches, inexact = bounded_batch(path, exported, net)
    file_classes = tuple(meta["classes"]) if "classes" in meta else None
    model = Normalized(net, preprocess, batches[1], batches[0])
    buffers = {k: b.clone() for k, b in model.named_buffers()}  # a training-mode graph updates them
    try:
        n_out = _n_outputs(model, preprocess)
    except InputError:
        raise
    except Exception as err:
        wants = ""
        if expected[0] is not None and expected[1] is not None:
            wants = f"; it was exported for {(expected[0], *expected[1])} inputs"
        raise InputError(f"{path}: model does not accept {preprocess.shape} inputs ({first_line(err)})"
                         f"{wants}; " + (guess if guess else "check --size/--channels")) from None
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    names = file_classes or classes or tuple(str(i) for i in range(n_out))
    if len(names) != n_out:
        raise InputError(f"model has {n_out} outputs but {len(names)} class names were given")
    loaded = LoadedModel(model, tuple(names), preprocess, kind, exported=exported,
                         classes_from_file=bool(file_classes or classes),
                         torchvision=tv_arch.spec if tv_arch else None, inexact=inexact,
                         preprocess_guess=guess)
    _check_finite(loaded.model, path)
    return loaded


def save(loaded: LoadedModel, path: str | Path, report: dict | None = None) -> None:
    """Write the (unlearned) model in the format it was read in, atomically, with class names and
    preprocessing embedded so the output is self-describing."""
    record = {"classes": list(loaded.classes), "preprocess": loaded.preprocess.to_dict(),
              "versions": versions(), "unlearning": report or {}}
    if loaded.torchvision is not None:
        record["torchvision"] = loaded.torchvision
    meta = json.dumps(record, sort_keys=True)
    net = loaded.net
    if loaded.source == "own":
        tc = dict(loaded.train_config)
        if report:
            tc["unlearning"] = {k: report[k] for k in ("method", "config", "seed") if k in report}
        save_own(path, net, loaded.arch, loaded.classes, loaded.preprocess, tc, loaded.mnemonic)
    elif loaded.source == "export":
        ep = loaded.exported
        current = net.state_dict()  # parameters and buffers (running statistics)
        for name, t in ep.state_dict.items():  # shares storage with net, but be explicit
            if name in current and t.data_ptr() != current[name].data_ptr():
                t.data.copy_(current[name].detach())
        atomic_write(path, lambda tmp: torch.export.save(ep, tmp, extra_files={EXTRA_FILE: meta}))
    elif loaded.source == "safetensors":
        from safetensors.torch import save_file
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={SAFETENSORS_KEY: meta}))
    elif loaded.source == "torchscript":
        with quiet_torchscript():
            atomic_write(path, lambda tmp: torch.jit.save(net, tmp, _extra_files={EXTRA_FILE: meta}))
    else:
        atomic_write(path, lambda tmp: torch.save(net, tmp))


def default_output(model_path: str | Path) -> Path:
    """``m.pt`` -> ``m.unlearned.pt`` beside the input (suffix kept)."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.unlearned{p.suffix or '.pt'}")


def is_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point())
