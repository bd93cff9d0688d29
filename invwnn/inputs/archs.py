"""What the parameters of a user's network are, and the torchvision architectures a weights-only
file names: :func:`param_kinds` (also for TorchScript and exported graphs),
``torchvision:NAME[:k=v,...]`` (:func:`parse_arch`, :func:`build_torchvision`) and
:func:`check_state_dict` (a file's tensors against an architecture's)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invwnn.errors import InputError, first_line
from trajgen import nets

TORCHVISION_PREFIX = "torchvision:"

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
        raise InputError(f"--arch {arch.spec}: torchvision cannot build it ({first_line(err)})") from None


def check_state_dict(path: Path, given: Any, expected: dict[str, torch.Tensor],
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
