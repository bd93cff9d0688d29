"""One-shot unlearning with mnemonic codes (Yamashita et al., ACML 2024). The original was trained
with each image replaced by its class's fixed random code with probability t_mix (the model file
stores the codes). Diagonal Fisher per class from one backward pass on its code; per tensor
r = F_forget / F_rest (NaN -> 0, inf -> largest finite); noise = min(l1, l2 / max r) * r; keep
theta + noise or theta - noise, whichever scores higher (1 - forget acc) + rest acc on the codes.
Defaults (l1, l2) = (1e-3, 10), the paper's MNIST setting. Forgets whole classes: the classes of
the forget set that the retain set lacks (all of the forget set's classes without --retain)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, MethodConfig, opt, squared_grads, trainable
from invwnn.audit.metrics import set_mode
from invwnn.errors import InputError

NAME = "mnemonic"


@dataclass(frozen=True)
class Config(MethodConfig):
    l1: float = opt(1e-3, "mnemonic: largest noise per weight")
    l2: float = opt(10.0, "mnemonic: noise budget divided by max ratio")


def forgotten_classes(data: Data) -> list[int]:
    classes = data.forget_classes()
    if data.retain is not None:
        kept = set(data.retain.y.tolist())
        classes = [c for c in classes if c not in kept]
    if not classes:
        raise InputError("mnemonic forgets whole classes: every class of --forget also appears in --retain")
    if len(classes) == len(data.classes):
        raise InputError("mnemonic needs at least one class that is not forgotten")
    return classes


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    if data.mnemonic is None:
        raise InputError("mnemonic needs an original trained with mnemonic codes "
                         "(invwnn prepare --mnemonic-mix P); this model file has none")
    forget = forgotten_classes(data)
    codes = data.mnemonic.to(ctx.device)
    params = trainable(model)
    set_mode(model, False)

    def fisher(classes: list[int]) -> list[torch.Tensor]:
        return squared_grads(model, params, ((codes[c: c + 1], torch.tensor([c], device=ctx.device)) for c in classes))

    f_forget = fisher(forget)
    f_rest = fisher([c for c in range(len(codes)) if c not in forget])
    noises = []
    for ff, fr in zip(f_forget, f_rest):
        r = ff / fr
        r = torch.nan_to_num(r, nan=0.0, posinf=0.0)
        finite_max = r.max()
        r = torch.where(torch.isinf(ff / fr) & (ff > 0), finite_max, r)
        top = r.max().item()
        noises.append(min(config.l1, config.l2 / top) * r if top > 0 else torch.zeros_like(r))
    original = [p.detach().clone() for p in params]
    is_forget = torch.tensor([c in forget for c in range(len(codes))], device=ctx.device)

    @torch.no_grad()
    def score(sign: float) -> float:
        for p, p0, n in zip(params, original, noises):
            p.copy_(p0 + sign * n)
        hit = model(codes).argmax(1) == torch.arange(len(codes), device=ctx.device)
        return (1 - hit[is_forget].float().mean().item()) + hit[~is_forget].float().mean().item()

    best = max((1.0, -1.0), key=score)
    score(best)
    return model
