"""Classifiers built from an :class:`ArchSpec`, and the parameter kinds both packages share.

The small families (``mlp``, ``cnn``, ``vit``) are defined here; the torchvision families
(``resnet18``, ``mobilenet_v2``, ``mobilenet_v3_small``, ``convnext``) are torchvision's own
modules with their stems adapted to 32x32 inputs (no stride-4 stem, no max-pool) and any number of
input channels, at a width multiplier of ``arch.width / STANDARD_WIDTH[family]``; ``vit_tv`` is
torchvision's ``VisionTransformer`` at hidden size ``arch.width`` on small patches.

``layer_table(model)`` is the contract between a model and a flat weight vector: the store's
coordinate axis and the applier's rewinding both follow its order (``model.named_parameters()``).
``sample_coords`` picks the fixed sample of positions a sampled run records.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

import numpy as np

from trajgen.spec import STANDARD_WIDTH, ArchSpec

# Parameter kinds. The integer code of a kind is its position here; the store records codes (and
# the predictor's kind embedding follows this order: append, never reorder). Depthwise and
# pointwise convolutions are "conv"; a squeeze-excitation's 1x1 convolutions act on a pooled
# vector, so their kernels are "linear"; a layer scale (ConvNeXt's per-channel gain) is "norm", like
# a norm's own per-channel scale.
KINDS = ("conv", "linear", "bias", "norm", "attention", "embedding")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# class names of squeeze-excitation modules (torchvision.ops.SqueezeExcitation, timm's SqueezeExcite)
SE_TYPES = ("SqueezeExcitation", "SqueezeExcite", "SEModule")

ACTIVATION = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
}


def param_kind(name: str, module: nn.Module, param: torch.Tensor, parent: nn.Module | None = None) -> str:
    """Kind of the parameter ``name`` (its attribute name on ``module``, whose parent module is
    ``parent``) for any torch model: norm affine parameters and layer scales, attention input
    projections, kernels of conv and linear modules (a squeeze-excitation's convolutions count as
    linear), biases (1-D), and everything else (tokens, positional and lookup embeddings)."""
    if isinstance(module, NORM_TYPES) or name == "layer_scale" or "LayerScale" in type(module).__name__:
        return "norm"
    if isinstance(module, nn.modules.conv._ConvNd) and name == "weight" and type(parent).__name__ in SE_TYPES:
        return "linear"
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
    modules = dict(model.named_modules())
    for mod_name, module in modules.items():
        parent = modules.get(mod_name.rpartition(".")[0]) if mod_name else None
        for p_name, p in module.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = (module, p_name, parent)
    table, offset = [], 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module, attr, parent = owner[name]
        table.append(Layer(name, tuple(p.shape), param_kind(attr, module, p, parent), offset, p.numel()))
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


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (He et al.'s CIFAR stem): a 3x3 stride-1 stem, no max-pool, then
    torchvision's ``BasicBlock`` stages of width, 2, 4, 8 x width channels (2 blocks each, strides
    1, 2, 2, 2), global average pooling and a linear head. Parameter names follow torchvision's
    ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``)."""

    def __init__(self, arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, conv1x1

        w = arch.width
        self.conv1 = nn.Conv2d(in_shape[0], w, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        stages, c = [], w
        for i, stride in enumerate((1, 2, 2, 2)):
            out = w * 2**i
            down = (nn.Sequential(conv1x1(c, out, stride), nn.BatchNorm2d(out))
                    if stride != 1 or c != out else None)
            stages.append(nn.Sequential(BasicBlock(c, out, stride, down), BasicBlock(out, out)))
            c = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _mult(arch: ArchSpec) -> float:
    return arch.width / STANDARD_WIDTH[arch.family]


def mobilenet_v2(arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """torchvision's MobileNetV2 at width multiplier ``width / 32`` for 32x32 inputs: the stem and
    the second stage keep stride 1 (three stride-2 stages remain: 32 -> 4)."""
    from torchvision.models import MobileNetV2
    from torchvision.ops import Conv2dNormActivation

    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    model = MobileNetV2(n_classes, _mult(arch), setting)
    stem = model.features[0]
    model.features[0] = Conv2dNormActivation(in_shape[0], stem[0].out_channels, stride=1,
                                             norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
    return model


def mobilenet_v3_small(arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """torchvision's MobileNetV3-small (squeeze-excitation, hard-swish) at width multiplier
    ``width / 16`` for 32x32 inputs: the stem and the first block keep stride 1 (32 -> 4). Its batch
    norms keep running statistics at torch's default momentum 0.1, not torchvision's 0.01."""
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
    from torchvision.ops import Conv2dNormActivation

    m = _mult(arch)
    rows = [(16, 3, 16, 16, True, "RE", 1), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]
    setting = [InvertedResidualConfig(*row, dilation=1, width_mult=m) for row in rows]
    model = MobileNetV3(setting, InvertedResidualConfig.adjust_channels(1024, m), n_classes)
    stem = model.features[0]
    model.features[0] = Conv2dNormActivation(in_shape[0], stem[0].out_channels, stride=1,
                                             norm_layer=stem[1].__class__, activation_layer=nn.Hardswish)
    # torchvision's 0.01 averages the statistics over ~100 steps, fitting its 600-epoch ImageNet
    # recipe; after a run of a few hundred steps the average still lags the moving weights and the
    # eval-mode network is at chance (measured: 10% against 100% in train mode). Only buffers
    # change: the weights' trajectory, which the train-mode forward decides, is the same.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def convnext(arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """A small ConvNeXt from torchvision's blocks (depthwise 7x7, LayerNorm, inverted MLP, layer
    scale): four stages of width, 2, 4, 8 x width channels with ``depth`` blocks each, and a 2x2
    stride-2 patchify stem for 32x32 inputs (32 -> 16 -> 8 -> 4 -> 2)."""
    from functools import partial

    from torchvision.models.convnext import CNBlockConfig, ConvNeXt, LayerNorm2d
    from torchvision.ops import Conv2dNormActivation

    w, d = arch.width, arch.depth
    setting = [CNBlockConfig(w * 2**i, w * 2**(i + 1) if i < 3 else None, d) for i in range(4)]
    model = ConvNeXt(setting, stochastic_depth_prob=0.0, num_classes=n_classes)
    model.features[0] = Conv2dNormActivation(in_shape[0], w, kernel_size=2, stride=2, padding=0,
                                             norm_layer=partial(LayerNorm2d, eps=1e-6), activation_layer=None,
                                             bias=True)
    return model


def vit_tv(arch: ArchSpec, in_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """torchvision's VisionTransformer for square inputs: ``arch.patch`` x ``arch.patch`` patches
    (4 on 32x32: 64 tokens and a class token), ``arch.depth`` encoder layers of ``arch.heads``
    heads, hidden size ``arch.width``, MLP 4 x width (ViT's ratio), no dropout. The patch
    projection takes ``in_shape``'s channels, initialised as torchvision initialises its own."""
    from torchvision.models import VisionTransformer

    c, h, w = in_shape
    if h != w or h % arch.patch:
        raise ValueError(f"vit_tv needs a square input whose side the patch {arch.patch} divides, got {h}x{w}")
    model = VisionTransformer(h, arch.patch, arch.depth, arch.heads, arch.width, 4 * arch.width,
                              num_classes=n_classes)
    if c != 3:
        proj = nn.Conv2d(c, arch.width, arch.patch, arch.patch)
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1 / (c * arch.patch**2)))
        nn.init.zeros_(proj.bias)
        model.conv_proj = proj
    return model


BUILDERS: dict[str, Callable[[ArchSpec, tuple[int, int, int], int], nn.Module]] = {
    "mlp": MLP, "cnn": CNN, "vit": ViT, "resnet18": CifarResNet18, "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small, "convnext": convnext, "vit_tv": vit_tv}


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


def _allocate(sizes: list[int], n: int) -> list[int]:
    """Split ``n <= sum(sizes)`` draws among groups of ``sizes``: each group first gets up to
    ``n // (2 * len(sizes))`` (so small groups are represented), the rest in proportion to what
    each group has left (largest remainders); never more than a group holds."""
    base = [min(s, n // (2 * len(sizes))) for s in sizes]
    left = [s - b for s, b in zip(sizes, base)]
    rest, room = n - sum(base), sum(left)
    share = [rest * l / room if room else 0.0 for l in left]
    out = [b + int(x) for b, x in zip(base, share)]
    order = sorted(range(len(sizes)), key=lambda i: int(share[i]) - share[i])  # largest remainder first
    for i in order[: n - sum(out)]:
        out[i] += 1
    return out


def sample_coords(table: list[Layer], n: int, seed: int) -> np.ndarray:
    """A fixed sample of ``n`` flat positions (int64, strictly increasing) of a model with layer
    table ``table``, stratified by kind, then by layer within a kind (:func:`_allocate` at each
    level), uniform without replacement inside a layer, seeded by ``seed`` alone. ``n`` at least
    the model's size gives every position."""
    total = sum(layer.numel for layer in table)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x5A3])
    kinds = [k for k in KINDS if any(layer.kind == k for layer in table)]
    per_layer: dict[int, int] = {}
    for kind, k_n in zip(kinds, _allocate([sum(l.numel for l in table if l.kind == kind) for kind in kinds], n)):
        rows = [i for i, layer in enumerate(table) if layer.kind == kind]
        per_layer.update(zip(rows, _allocate([table[i].numel for i in rows], k_n)))
    picks = [table[i].offset + np.sort(rng.choice(table[i].numel, per_layer[i], replace=False))
             for i in range(len(table)) if per_layer[i]]
    return np.concatenate(picks).astype(np.int64)


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


def flat_buffers(model: nn.Module) -> torch.Tensor:
    """The floating-point buffers (norm statistics) in ``named_buffers`` order: a new 1-D tensor
    (empty where there are none)."""
    bufs = [b.detach().reshape(-1).float() for _, b in model.named_buffers() if b.is_floating_point()]
    return torch.cat(bufs) if bufs else torch.zeros(0)


@torch.no_grad()
def load_flat_buffers(model: nn.Module, flat: torch.Tensor) -> None:
    """Write a vector from :func:`flat_buffers` back into ``model``'s buffers."""
    i = 0
    for _, b in model.named_buffers():
        if b.is_floating_point():
            b.copy_(flat[i: i + b.numel()].view_as(b))
            i += b.numel()
    if i != flat.numel():
        raise ValueError(f"{flat.numel()} buffer values for a model with {i}")
