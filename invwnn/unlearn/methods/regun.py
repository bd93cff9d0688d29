"""ReGUn, reference-guided unlearning (Mirlach et al. 2026, arXiv 2603.11210): distil the model's
outputs on forget images toward the frozen original's outputs on held-out images of the same
classes, (1 - w) * KL(q || p_model(forget)) + w * CE(retain), one forget and one retain batch per
step, epochs counted over the forget set. The paper's q, the original's mean softmax over held-out
images matching the forget batch's class histogram, is here its expectation: the batch's class
shares times each class's mean softmax (``target batch``), or each image's own class mean
(``target class``). The paper's reference is 10% of the training data held out; a user has no
such split, so it is the test split when given (``reference auto``: the method never trains on
those images, but its targets are the original's outputs on them), else the retain set. A class
the reference lacks takes the mean over all of it. Defaults from the authors' conf/unlearn/regun.yaml:
SGD lr 0.01 m0.9, 10 epochs, w 0.5, temperature 1."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, opt, train_epochs
from invwnn.audit.metrics import set_mode
from invwnn.errors import InputError

NAME = "regun"


@dataclass(frozen=True)
class Config(EpochsConfig):
    retain_weight: float = opt(0.5, "regun: weight w of the retain cross-entropy (the forget KL gets 1 - w)")
    target: str = opt("batch", "regun: batch (one target per forget batch, as the paper) or class (per image)")
    reference: str = opt("auto", "regun: held-out images for the targets: auto (test if given, else retain), "
                                 "test or retain")


@torch.no_grad()
def class_means(model: nn.Module, split: Split, n_classes: int, device: str) -> torch.Tensor:
    """(n_classes, n_classes): row c, the mean softmax of ``model`` over ``split``'s images of class
    c (over all its images for a class it lacks)."""
    set_mode(model, False)
    probs = torch.cat([F.softmax(model(split.x[i: i + 256].to(device)).float(), 1).cpu()
                       for i in range(0, len(split), 256)])
    sums = torch.zeros(n_classes, n_classes).index_add_(0, split.y, probs)
    counts = torch.bincount(split.y, minlength=n_classes).float()
    return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], probs.mean(0))


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    if config.target not in ("batch", "class") or config.reference not in ("auto", "test", "retain"):
        raise InputError(f"regun: --target takes batch or class, --reference auto, test or retain "
                         f"(got {config.target!r}, {config.reference!r})")
    use_test = config.reference == "test" or (config.reference == "auto" and data.test is not None and len(data.test))
    means = class_means(model, data.need("test", NAME) if use_test else retain, len(data.classes),
                        ctx.device).to(ctx.device)
    fs = Sampler(data.forget, config.batch_size, ctx.generator(20), ctx.device)
    rs = Sampler(retain, config.batch_size, ctx.generator(21), ctx.device)

    def loss(_: int) -> torch.Tensor:
        (xf, yf), (xr, yr) = fs(), rs()
        if config.target == "batch":
            q = (torch.bincount(yf, minlength=len(means)).float() / len(yf) @ means).expand(len(yf), -1)
        else:
            q = means[yf]
        forget = F.kl_div(F.log_softmax(model(xf), 1), q, reduction="batchmean")
        return (1 - config.retain_weight) * forget + config.retain_weight * F.cross_entropy(model(xr), yr)

    train_epochs(model, loss, config, len(data.forget), ctx, NAME)
    return model
