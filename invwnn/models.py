"""User model files in and out, behind one wrapper every method sees.

Formats read (detected from the archive's contents, not the file name):
- the project's own format: a dict of plain tensors, strings and numbers written by :func:`save_own`
  (architecture spec, state_dict, class names, preprocessing, optional mnemonic codes, training
  config, versions); loaded with ``weights_only=True``;
- ``torch.export`` archives (.pt2) and TorchScript archives; class names and preprocessing come from
  an ``invwnn.json`` extra file when present (this project writes one), else from flags/defaults;
- a full pickled ``nn.Module``, only when the caller passes ``trust_pickle=True``.

The unlearned model is written back in the format it came in, atomically (temp file, then
``os.replace``), so a failed run never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trajgen import nets
from trajgen.spec import ArchSpec, SpecError

FORMAT = "invwnn-model"
FORMAT_VERSION = 1
EXTRA_FILE = "invwnn.json"  # metadata carried inside .pt2 / TorchScript archives


class InputError(ValueError):
    """Bad user input (model file, data folder, flags): reported as one line, exit code 2."""


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input: ``channels`` x ``size`` (H, W) pixels, scaled to [0, 1],
    then ``(x - mean) / std`` per channel. Inputs of other sizes or channel counts are rejected."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels < 1 or len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"bad preprocessing: size {self.size}, channels {self.channels}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, self.channels):
                raise InputError(f"--{name} needs 1 or {self.channels} values, got {len(v)}")
        if any(s <= 0 for s in self.std):
            raise InputError("--std values must be positive")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(tuple(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


class Normalized(nn.Module):
    """``net`` behind its input normalisation, so every method feeds images in [0, 1]. mean/std are
    buffers, not parameters: methods and rewinding never touch them."""

    def __init__(self, net: nn.Module, pre: Preprocess):
        super().__init__()
        self.net = net
        c = pre.channels
        self.register_buffer("mean", torch.tensor(pre.mean).expand(c).reshape(1, c, 1, 1).clone())
        self.register_buffer("std", torch.tensor(pre.std).expand(c).reshape(1, c, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


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

    @property
    def net(self) -> nn.Module:
        return self.model.net

    def kinds(self) -> dict[str, str]:
        return param_kinds(self.model)

    def rebuild(self) -> nn.Module:
        """A freshly initialised copy of the architecture (for retraining), wrapped like ``model``."""
        if self.arch is not None:
            net = nets.build(ArchSpec(**self.arch), self.preprocess.shape, len(self.classes))
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


# Module type names as TorchScript records them (``original_name``) for kind inference.
_SCRIPT_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm2d")
_SCRIPT_CONVS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def param_kinds(model: nn.Module) -> dict[str, str]:
    """Kind of every trainable parameter of ``model`` (name -> one of trajgen.nets.KINDS).

    Real modules use :func:`trajgen.nets.layer_table`. TorchScript modules keep their type name; an
    exported graph keeps only shapes, so there a 4-D (or 3-D/5-D) tensor is a conv kernel, 2-D a
    linear kernel, a 1-D ``bias`` a bias and any other 1-D ``weight`` a norm's scale (the only common
    1-D weight)."""
    kinds = {}
    modules = dict(model.named_modules())
    for layer in nets.layer_table(model):
        kind = layer.kind
        owner_name, _, attr = layer.name.rpartition(".")
        owner = modules.get(owner_name)
        typename = getattr(owner, "original_name", None)
        if typename is not None and isinstance(owner, torch.jit.ScriptModule):
            if typename in _SCRIPT_NORMS:
                kind = "norm"
            elif typename in _SCRIPT_CONVS and attr == "weight":
                kind = "conv"
            elif typename == "Linear" and attr == "weight":
                kind = "linear"
        elif type(owner) is nn.Module and kind == "embedding":  # exported graph: shapes only
            nd = len(layer.shape)
            kind = ("conv" if nd in (3, 4, 5) else "linear" if nd == 2
                    else "bias" if attr == "bias" else "norm" if nd == 1 else "embedding")
        if kind == "bias" and typename in _SCRIPT_NORMS:
            kind = "norm"
        kinds[layer.name] = kind
    # biases of exported norm layers: a 1-D bias next to a 1-D norm scale belongs to the norm
    for name, kind in list(kinds.items()):
        if kind == "bias" and name.endswith(".bias"):
            if kinds.get(name[: -len("bias")] + "weight") == "norm":
                kinds[name] = "norm"
    return kinds


def versions() -> dict[str, str]:
    from importlib.metadata import version
    import torchvision
    return {"invwnn": version("invwnn"), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__)}


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path``: readers see the old file or
    the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
            head = f.read(4)
        if not head:
            raise InputError(f"model file {path} is empty (zero bytes)") from None
        if head == b"PK\x03\x04":  # a zip archive whose directory, at its end, is gone
            raise InputError(f"{path} is a truncated or damaged archive (copy it again)") from None
        if not head.startswith(b"\x80"):  # every pickle since protocol 2 starts with PROTO
            raise InputError(f"{path} is not a model file (neither a zip archive nor a pickle)") from None
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
    _check_state_dict(path, blob.get("state_dict"), net.state_dict())
    net.load_state_dict(blob["state_dict"])
    mnemonic = blob.get("mnemonic")
    codes_shape = (len(classes), *pre.shape)
    if mnemonic is not None and not (torch.is_tensor(mnemonic) and mnemonic.is_floating_point()
                                     and mnemonic.shape == codes_shape):
        raise InputError(f"{path}: mnemonic codes must be a float tensor of shape {codes_shape} "
                         "(one image per class)")
    return LoadedModel(Normalized(net, pre), classes, pre, "own", arch=dict(blob["arch"]),
                       mnemonic=mnemonic, train_config=json.loads(blob.get("train_config", "{}")))


def _check_state_dict(path: Path, given: Any, expected: dict[str, torch.Tensor]) -> None:
    """``given`` must hold exactly the tensors of the recorded architecture's ``expected``
    state_dict, with their shapes and dtypes. Checked here because ``load_state_dict`` silently
    casts a float64 or integer tensor, and its own errors do not fit on one line."""
    if not isinstance(given, dict):
        raise InputError(f"{path}: state_dict is {'missing' if given is None else type(given).__name__}, "
                         "not a dict of tensors")
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        what = (f"lacks {missing[0]!r}, which its recorded architecture needs" if missing
                else f"holds {extra[0]!r}, for which its recorded architecture has no place")
        more = len(missing) + len(extra) - 1
        raise InputError(f"{path}: state_dict {what}" + (f" ({more} more mismatched names)" if more else ""))
    for name, want in expected.items():
        t = given[name]
        if not torch.is_tensor(t):
            raise InputError(f"{path}: state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.shape != want.shape or t.dtype != want.dtype:
            raise InputError(f"{path}: {name} is {_describe(t)}; its recorded architecture needs {_describe(want)}")


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


def load(path: str | Path, *, trust_pickle: bool = False, classes: tuple[str, ...] | None = None,
         preprocess: Preprocess | None = None) -> LoadedModel:
    """Read any supported model file. ``classes`` and ``preprocess`` are used only when the file has
    none; missing both, preprocessing must be given (the caller infers it from the data) and class
    names default to ``"0"``, ``"1"``, ... (so folders named by index map correctly)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    kind = _archive_kind(path)
    meta: dict = {}
    exported = None
    try:
        if kind == "export":
            extra = {EXTRA_FILE: ""}
            exported = torch.export.load(str(path), extra_files=extra)
            meta = json.loads(extra[EXTRA_FILE] or "{}")
            net = exported.module()
        elif kind == "torchscript":
            extra = {EXTRA_FILE: ""}
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            raw = extra[EXTRA_FILE]
            meta = json.loads((raw.decode() if isinstance(raw, bytes) else raw) or "{}")
        else:
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                if not trust_pickle:
                    raise InputError(f"{path} holds pickled Python objects (a full nn.Module?); "
                                     "loading it runs arbitrary code: pass --trust-pickle if you "
                                     "trust its source") from None
                blob = torch.load(path, map_location="cpu", weights_only=False)
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
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path} is not a readable model file ({first[:160]})") from None
    if "preprocess" in meta:
        preprocess = Preprocess.from_dict(meta["preprocess"])
    if preprocess is None:
        raise InputError(f"{path} records no preprocessing; pass --size and --channels")
    file_classes = tuple(meta["classes"]) if "classes" in meta else None
    try:
        n_out = _n_outputs(net, preprocess)
    except InputError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path}: model does not accept {preprocess.shape} inputs ({first[:160]}); "
                         "check --size/--channels") from None
    names = file_classes or classes or tuple(str(i) for i in range(n_out))
    if len(names) != n_out:
        raise InputError(f"model has {n_out} outputs but {len(names)} class names were given")
    loaded = LoadedModel(Normalized(net, preprocess), tuple(names), preprocess, kind,
                         exported=exported, classes_from_file=bool(file_classes or classes))
    _check_finite(loaded.model, path)
    return loaded


def peek_preprocess(path: str | Path) -> Preprocess | None:
    """The preprocessing recorded in a model file, without building the model (None if absent)."""
    path = Path(path)
    kind = _archive_kind(path) if path.is_file() else None
    try:
        if kind == "torch.save":
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(blob, dict) and "preprocess" in blob:
                return Preprocess.from_dict(blob["preprocess"])
        elif kind in ("export", "torchscript"):
            with zipfile.ZipFile(path) as z:
                for n in z.namelist():
                    if n.endswith(f"extra/{EXTRA_FILE}"):
                        meta = json.loads(z.read(n) or b"{}")
                        if "preprocess" in meta:
                            return Preprocess.from_dict(meta["preprocess"])
    except Exception:
        return None
    return None


def save(loaded: LoadedModel, path: str | Path, report: dict | None = None) -> None:
    """Write the (unlearned) model in the format it was read in, atomically, with class names and
    preprocessing embedded so the output is self-describing."""
    meta = json.dumps({"classes": list(loaded.classes), "preprocess": loaded.preprocess.to_dict(),
                       "versions": versions(), "unlearning": report or {}}, sort_keys=True)
    net = loaded.net
    if loaded.source == "own":
        tc = dict(loaded.train_config)
        if report:
            tc["unlearning"] = {k: report[k] for k in ("method", "config", "seed") if k in report}
        save_own(path, net, loaded.arch, loaded.classes, loaded.preprocess, tc, loaded.mnemonic)
    elif loaded.source == "export":
        ep = loaded.exported
        params = dict(net.named_parameters())
        for name, t in ep.state_dict.items():  # shares storage with net, but be explicit
            if name in params and t.data_ptr() != params[name].data_ptr():
                t.data.copy_(params[name].detach())
        atomic_write(path, lambda tmp: torch.export.save(ep, tmp, extra_files={EXTRA_FILE: meta}))
    elif loaded.source == "torchscript":
        atomic_write(path, lambda tmp: torch.jit.save(net, tmp, _extra_files={EXTRA_FILE: meta}))
    else:
        atomic_write(path, lambda tmp: torch.save(net, tmp))


def default_output(model_path: str | Path) -> Path:
    """``m.pt`` -> ``m.unlearned.pt`` beside the input (suffix kept)."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.unlearned{p.suffix or '.pt'}")


def is_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point())


__all__ = ["InputError", "Preprocess", "Normalized", "LoadedModel", "load", "save", "save_own",
           "param_kinds", "atomic_write", "default_output", "peek_preprocess"]
