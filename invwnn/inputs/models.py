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
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from invwnn.errors import InputError
from invwnn.files import atomic_write, versions
from trajgen import nets
from trajgen.spec import ArchSpec, SpecError

FORMAT = "invwnn-model"
FORMAT_VERSION = 1
EXTRA_FILE = "invwnn.json"  # metadata carried inside .pt2 / TorchScript archives


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
    buffers, not parameters: methods and rewinding never touch them.

    ``micro_batch``: for a net that accepts at most that many images at once (an exported program
    with a fixed batch size, or a bounded dynamic one), and ``min_batch`` (default: ``micro_batch``,
    a fixed size) the fewest it accepts. A batch ``(N, C, H, W)`` then runs as
    ``ceil(N / micro_batch)`` calls; a last one smaller than ``min_batch`` is padded by repeating its
    own images and the padded rows' outputs are dropped, so the output is ``(N, classes)`` as for any
    net and a loss over it back-propagates through every call (autograd sums the gradients: with
    per-image layers the result equals one big batch's up to float rounding). Batch-statistic
    layers (batch norm in training mode) see each micro-batch, padding included, on its own."""

    def __init__(self, net: nn.Module, pre: Preprocess, micro_batch: int | None = None,
                 min_batch: int | None = None):
        super().__init__()
        self.net = net
        self.micro_batch = micro_batch
        self.min_batch = micro_batch if min_batch is None else min_batch
        c = pre.channels
        self.register_buffer("mean", torch.tensor(pre.mean).expand(c).reshape(1, c, 1, 1).clone())
        self.register_buffer("std", torch.tensor(pre.std).expand(c).reshape(1, c, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.micro_batch is None or self.min_batch <= len(x) <= self.micro_batch:
            return self.net(x)
        outs = []
        for chunk in x.split(self.micro_batch):
            n = len(chunk)
            if n < self.min_batch:
                chunk = torch.cat([chunk, chunk[torch.arange(self.min_batch - n, device=chunk.device) % n]])
            outs.append(self.net(chunk)[:n])
        return torch.cat(outs)


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


SAFETENSORS_KEY = "invwnn"  # safetensors metadata entry holding the same JSON as EXTRA_FILE
TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class TorchvisionArch:
    """A torchvision classification architecture: ``torchvision.models.get_model(name,
    weights=None, **kwargs)``. ``spec`` is the ``torchvision:NAME[:k=v,...]`` text it came from."""

    name: str
    kwargs: dict[str, Any]
    spec: str


def _kwarg_value(text: str) -> Any:
    """``10`` -> int, ``0.25`` / ``1e-3`` -> float, ``true`` / ``false`` -> bool, else the string."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_arch(spec: str) -> TorchvisionArch:
    """Parse ``torchvision:NAME[:k=v,k=v,...]`` (e.g. ``torchvision:resnet18:num_classes=10``).
    NAME must be one of torchvision's classification models; values are ints, floats, bools
    (true/false) or strings. Raises :class:`InputError` with the reason on one line."""
    usage = "--arch takes torchvision:NAME[:key=value,...], e.g. torchvision:resnet18:num_classes=10"
    if not isinstance(spec, str) or not spec.startswith(TORCHVISION_PREFIX):
        raise InputError(f"{usage}; got {spec!r}")
    name, _, rest = spec[len(TORCHVISION_PREFIX):].partition(":")
    import torchvision
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        import difflib
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"--arch: {name!r} is not a torchvision classification model{hint}; "
                         "torchvision.models.list_models(module=torchvision.models) lists them")
    kwargs: dict[str, Any] = {}
    for item in rest.split(",") if rest else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier() or not value.strip():
            raise InputError(f"{usage}; {item!r} is not key=value")
        if key == "weights":
            raise InputError("--arch: weights come from the model file, not from torchvision")
        if key in kwargs:
            raise InputError(f"--arch: {key!r} is given twice")
        kwargs[key] = _kwarg_value(value.strip())
    return TorchvisionArch(name, kwargs, spec)


def build_torchvision(arch: TorchvisionArch) -> nn.Module:
    """A freshly initialised ``arch`` (no download: ``weights=None``)."""
    import torchvision
    try:
        return torchvision.models.get_model(arch.name, weights=None, **arch.kwargs)
    except Exception as err:  # a wrong keyword, type or value: whatever the constructor raises
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"--arch {arch.spec}: torchvision cannot build it ({first[:160]})") from None


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


def _check_state_dict(path: Path, given: Any, expected: dict[str, torch.Tensor],
                      arch: str = "its recorded architecture") -> None:
    """``given`` must hold exactly the tensors of the architecture's ``expected`` state_dict, with
    their shapes and dtypes. Checked here because ``load_state_dict`` silently casts a float64 or
    integer tensor, and its own errors do not fit on one line."""
    if not isinstance(given, dict):
        raise InputError(f"{path}: state_dict is {'missing' if given is None else type(given).__name__}, "
                         "not a dict of tensors")
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        what = []
        if missing:
            what.append(f"lacks {_names(missing)}, which {arch} needs")
        if extra:
            what.append(f"holds {_names(extra)}, for which {arch} has no place")
        raise InputError(f"{path}: state_dict {'; it '.join(what)}")
    for name, want in expected.items():
        t = given[name]
        if not torch.is_tensor(t):
            raise InputError(f"{path}: state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.shape != want.shape or t.dtype != want.dtype:
            raise InputError(f"{path}: {name} is {_describe(t)}; {arch} needs {_describe(want)}")


def _names(names: list[str], shown: int = 3) -> str:
    """``'a', 'b', 'c' and 4 more``: the first ``shown`` names of a list, and how many others."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


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
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path} is not a readable safetensors file ({first[:160]})") from None
    spec = arch_flag or meta.get("torchvision")
    if spec is None:
        raise InputError(f"{path} holds weights only: name their architecture with --arch "
                         "torchvision:NAME[:key=value,...], e.g. torchvision:resnet18:num_classes=10")
    arch = parse_arch(spec)
    net = build_torchvision(arch)
    try:
        _check_state_dict(path, tensors, net.state_dict(),
                          f"--arch {arch.spec}" if arch_flag else f"its recorded architecture {arch.spec}")
    except InputError as err:
        raise InputError(f"{err}; a modified architecture (e.g. another first convolution) cannot be "
                         "rebuilt from torchvision: save the model as TorchScript or torch.export (.pt2), "
                         "which carry their architecture") from None
    net.load_state_dict(tensors)
    return net.eval(), meta, arch


def _exported_input(ep) -> torch.Size | None:
    """Shape of an exported program's one user input as it was exported: ints where fixed,
    ``SymInt`` where dynamic (None when there is not exactly one tensor input)."""
    names = list(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(vals) != 1 or not torch.is_tensor(vals[0]):
        return None
    return vals[0].shape


def batch_stat_norms(ep) -> int:
    """How many batch-norm calls of an exported program use batch statistics (the module was in
    training mode when exported): their output depends on the other images of the batch."""
    count = 0
    for n in ep.graph.nodes:
        if n.op != "call_function" or "batch_norm" not in str(n.target) or "no_training" in str(n.target):
            continue
        schema = getattr(n.target, "_schema", None)
        names = [a.name for a in schema.arguments] if schema is not None else []
        if "training" in names:
            i = names.index("training")
            if (n.args[i] if i < len(n.args) else n.kwargs.get("training", False)) is True:
                count += 1
    return count


def _expected_input(net: nn.Module, exported) -> tuple[int | None, tuple[int, int] | None]:
    """What the model itself says of its input: (channels, (H, W)), None where it does not say.
    An exported program gives its fixed dimensions; a module with real layers the input channels of
    its first convolution."""
    if exported is not None:
        shape = _exported_input(exported)
        if shape is None or len(shape) != 4:
            return None, None
        c, h, w = (d if isinstance(d, int) else None for d in shape[1:])
        return c, (h, w) if h is not None and w is not None else None
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return (first.in_channels if first is not None else None), None


@dataclass(frozen=True)
class PreprocessHint:
    """Preprocessing for a file that records none, from flags: ``size`` and ``channels`` not given
    come from the model itself (an exported program's fixed input shape, the input channels of a
    real module's first convolution), else from ``data`` (the first image of the folder named
    ``data_source``, e.g. ``"--forget forget/"``); ``mean`` and ``std`` default to no normalisation."""

    size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data: Preprocess | None = None
    data_source: str = "the forget images"

    def resolve(self, expected: tuple[int | None, tuple[int, int] | None]) -> Preprocess | None:
        channels = self.channels or expected[0] or (self.data.channels if self.data else None)
        size = self.size or expected[1] or (self.data.size if self.data else None)
        if size is None or channels is None:
            return None
        return Preprocess(size, channels, self.mean or (0.0,), self.std or (1.0,))

    def guessed(self, expected: tuple[int | None, tuple[int, int] | None]) -> str | None:
        """What :meth:`resolve` took from anything but the flags, as one sentence naming where it
        came from and the flags that fix it; None when the flags gave everything."""
        parts = []
        if self.size is None:
            h, w = expected[1] or self.data.size
            parts.append(f"input size {h}x{w} from " + ("the model's input shape" if expected[1] else
                                                        f"the first image of {self.data_source}"))
        if self.channels is None:
            c = expected[0] or self.data.channels
            parts.append(f"{c} channel(s) from " + ("the model's first convolution" if expected[0] else
                                                    f"the first image of {self.data_source}"))
        if self.mean is None and self.std is None:
            parts.append("no normalisation")
        if not parts:
            return None
        return ("the model file records no preprocessing, so invwnn assumed " + ", ".join(parts)
                + "; if the model was trained on other inputs, pass --size HxW, --channels C, --mean and --std")


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
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path} is not a readable model file ({first[:160]})") from None
    expected = _expected_input(net, exported)
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
        batches, inexact = _bounded_batch(path, exported, net)
    file_classes = tuple(meta["classes"]) if "classes" in meta else None
    model = Normalized(net, preprocess, batches[1], batches[0])
    buffers = {k: b.clone() for k, b in model.named_buffers()}  # a training-mode graph updates them
    try:
        n_out = _n_outputs(model, preprocess)
    except InputError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        wants = ""
        if expected[0] is not None and expected[1] is not None:
            wants = f"; it was exported for {(expected[0], *expected[1])} inputs"
        raise InputError(f"{path}: model does not accept {preprocess.shape} inputs ({first[:160]})"
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


def _bounded_batch(path: Path, exported, net: nn.Module) -> tuple[tuple[int | None, int | None], tuple[str, ...]]:
    """The fewest and the most images the exported program takes in one call when the most is
    bounded (both its batch size when fixed; the range of a dynamic batch dimension with a finite
    upper end), else ``(None, None)``; and the notes on what running it in micro-batches or with
    batch statistics changes. Also makes every parameter of ``net`` a leaf that requires grad, so
    methods can train it (refusing a graph whose parameters are not leaves)."""
    import sympy
    for name, p in net.named_parameters():
        if not p.is_leaf:
            raise InputError(f"{path}: parameter {name} of the exported program is not a leaf tensor; "
                             "it cannot be trained")
        p.requires_grad_(True)
    shape = _exported_input(exported)
    lo = hi = None
    if shape is not None and len(shape):
        if isinstance(shape[0], int):
            lo = hi = shape[0]
        else:
            bounds = exported.range_constraints.get(shape[0].node.expr)
            if bounds is not None and isinstance(bounds.upper, sympy.Integer):  # not int_oo: bounded
                lo, hi = int(bounds.lower), int(bounds.upper)
    norms = batch_stat_norms(exported)
    notes = []
    if norms:
        notes.append(f"{norms} batch-norm layer(s) of the exported program were exported in training "
                     "mode: every forward pass, evaluation included, normalises with the batch's own "
                     "statistics and updates the running statistics")
    if norms and hi is not None:
        pad = (" (a last one of fewer than {lo} padded by repeating its images)", ", padding included") \
            if lo > 1 else ("", "")
        notes.append(f"the exported batch size is {'fixed at' if lo == hi else 'at most'} {hi}: larger "
                     f"batches run as micro-batches of {hi} images{pad[0].format(lo=lo)}, so those batch "
                     f"statistics are per micro-batch{pad[1]}, not per the method's batch")
    return (lo, hi), tuple(notes)


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


__all__ = ["InputError", "Preprocess", "PreprocessHint", "Normalized", "LoadedModel", "TorchvisionArch",
           "load", "save", "save_own", "parse_arch", "build_torchvision", "batch_stat_norms",
           "param_kinds", "atomic_write", "default_output"]
