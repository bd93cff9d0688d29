"""Small classifiers built from an :class:`ArchSpec`, and the parameter kinds both packages share.

``layer_table(model)`` is the contract between a model and a flat weight vector: the store's
coordinate axis and the applier's rewinding both follow its order (``model.named_parameters()``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from trajgen.spec import ArchSpec

# Parameter kinds. The integer code of a kind is its position here; the store records codes.
KINDS = ("conv", "linear", "bias", "norm", "attention", "embedding")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

ACTIVATION = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
}


def param_kind(name: str, module: nn.Module, param: torch.Tensor) -> str:
    """Kind of the parameter ``name`` (its attribute name on ``module``) for any torch model:
    norm affine parameters, attention input projections, kernels of conv and linear modules,
    biases (1-D), and everything else (tokens, positional and lookup embeddings)."""
    if isinstance(module, NORM_TYPES):
        return "norm"
    if isinstance(module, nn.MultiheadAttention) and name.endswith("proj_weight"):
        return "attention"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.modules.conv._ConvNd) and name == "weight":
        return "conv"
    if param.ndim == 2 and isinstance(module, nn.Linear):
        return "linear"
    if param.ndim == 1 and name.endswith("bias"):
        return "bias"
    return "embedding"


@dataclass(frozen=True)
class Layer:
    """One parameter tensor's place in the flat coordinate vector ``[offset, offset + numel)``."""

    name: str
    shape: tuple[int, ...]
    kind: str
    offset: int
    numel: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Layer":
        return cls(d["name"], tuple(d["shape"]), d["kind"], int(d["offset"]), int(d["numel"]))


def layer_table(model: nn.Module) -> list[Layer]:
    """Every trainable parameter of ``model`` in ``named_parameters()`` order, with its kind."""
    owner = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = (module, p_name)
    table, offset = [], 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module, attr = owner[name]
        table.append(Layer(name, tuple(p.shape), param_kind(attr, module, p), offset, p.numel()))
        offset += p.numel()
    return table


class MLP(nn.Sequential):
    def __init__(self, arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int):
        act = ACTIVATION[arch.activation]
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = math.prod(in_shape)
        for _ in range(arch.depth):
            layers += [nn.Linear(n_in, arch.width), act()]
            n_in = arch.width
        layers.append(nn.Linear(n_in, n_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """conv3x3-BatchNorm-act-maxpool blocks of width, 2*width, 2*width, ... channels (the shape of
    NiNo's 16-32-32 CNN), then a linear head."""

    def __init__(self, arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int):
        act = ACTIVATION[arch.activation]
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for i in range(arch.depth):
            out = arch.width * min(2**i, 2)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), act(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, n_classes)]
        super().__init__(*layers)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), act(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A tiny vision transformer: linear patch embedding, class token, learned positions."""

    def __init__(self, arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        c, h, w = in_shape
        p = arch.patch
        if h % p or w % p:
            raise ValueError(f"patch {p} does not divide the {h}x{w} input")
        self.patch = p
        n_tokens = (h // p) * (w // p)
        self.embed = nn.Linear(c * p * p, arch.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, arch.width) * 0.02)
        act = ACTIVATION[arch.activation]
        self.blocks = nn.Sequential(*[Block(arch.width, arch.heads, act) for _ in range(arch.depth)])
        self.norm = nn.LayerNorm(arch.width)
        self.head = nn.Linear(arch.width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        b, c, h, w = x.shape
        x = x.unfold(2, p, p).unfold(3, p, p)  # (b, c, h/p, w/p, p, p)
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // p) * (w // p), c * p * p)
        x = torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


BUILDERS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "vit": ViT}


def init_weights(model: nn.Module, init: str) -> None:
    """Re-initialise kernels (>= 2-D, outside norms) with ``init``; biases to zero. ``default``
    keeps torch's own initialisation."""
    if init == "default":
        return
    fill = {
        "kaiming": lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu"),
        "xavier": nn.init.xavier_uniform_,
        "orthogonal": nn.init.orthogonal_,
    }[init]
    params = dict(model.named_parameters())
    for layer in layer_table(model):
        p = params[layer.name]
        if layer.kind in ("conv", "linear", "attention"):
            fill(p.data)
        elif layer.kind == "bias":
            p.data.zero_()


def build(arch: ArchSpec, in_shape: tuple[int, int, int] = (1, 28, 28), n_classes: int = 10,
          init: str = "default") -> nn.Module:
    """The classifier described by ``arch`` for inputs of shape ``in_shape`` (C, H, W)."""
    model = BUILDERS[arch.family](arch, in_shape, n_classes)
    init_weights(model, init)
    return model


def n_params(model: nn.Module) -> int:
    return sum(layer.numel for layer in layer_table(model))


def flat_weights(model: nn.Module, table: list[Layer] | None = None) -> torch.Tensor:
    """All trainable parameters concatenated in layer-table order: a new 1-D tensor."""
    table = layer_table(model) if table is None else table
    params = dict(model.named_parameters())
    return torch.cat([params[layer.name].detach().reshape(-1) for layer in table])


@torch.no_grad()
def load_flat_weights(model: nn.Module, flat: torch.Tensor, table: list[Layer] | None = None) -> None:
    """Write a flat vector from :func:`flat_weights` back into ``model``'s parameters."""
    table = layer_table(model) if table is None else table
    params = dict(model.named_parameters())
    for layer in table:
        chunk = flat[layer.offset: layer.offset + layer.numel]
        params[layer.name].copy_(chunk.view(layer.shape))
