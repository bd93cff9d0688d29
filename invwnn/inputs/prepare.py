"""Train an original classifier and write the forget / retain / test splits as ImageFolder
directories, so ``invwnn apply --model m.pt --forget forget/`` can be tried on real data.

Default: Fashion-MNIST, the trajgen CNN conv32-conv64 (BatchNorm, ReLU, linear head) trained with
Adam 1e-3 at batch 128. The defaults are demo-sized (3,000 training images, 10 epochs: under a
minute on 2 cores); ``--train-size 10000 --epochs 20 --test-size 10000`` is BRIEF section 6's setting.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from invwnn.audit import metrics
from invwnn.errors import InputError
from invwnn.files import atomic_write
from invwnn.inputs import splits as forget_io
from invwnn.inputs.models import save_own
from invwnn.inputs.preprocess import Normalized, Preprocess
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Sampler, make_optimizer, run_steps, steps_for
from trajgen import data as datasets
from trajgen import nets
from trajgen.spec import ArchSpec


@dataclass(frozen=True)
class PrepareConfig:
    """``forget``: "random" (``forget_fraction`` of the training subset) or "classes" (every image
    of ``forget_classes``, names of the dataset's classes). ``mnemonic_mix``: probability that a
    training image is replaced by its class's mnemonic code (0 = off)."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    train_size: int = 3000
    test_size: int = 2000
    width: int = 32
    depth: int = 2
    activation: str = "relu"
    epochs: float = 10.0
    lr: float = 1e-3
    batch_size: int = 128
    forget: str = "random"
    forget_fraction: float = 0.1
    forget_classes: tuple[str, ...] = ()
    mnemonic_mix: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrepareConfig":
        d = dict(d)
        d["forget_classes"] = tuple(d.get("forget_classes", ()))
        return cls(**d)


def choose_forget(y: torch.Tensor, classes: tuple[str, ...], config: PrepareConfig,
                  g: torch.Generator) -> torch.Tensor:
    """Boolean mask over ``y`` of the images to forget."""
    if config.forget == "random":
        if not 0 < config.forget_fraction < 1:
            raise InputError("--forget-fraction must be in (0, 1)")
        n = max(1, round(config.forget_fraction * len(y)))
        mask = torch.zeros(len(y), dtype=torch.bool)
        mask[torch.randperm(len(y), generator=g)[:n]] = True
        return mask
    if config.forget == "classes":
        names = {c: i for i, c in enumerate(classes)} | {forget_io.folder_name(c): i for i, c in enumerate(classes)}
        unknown = [c for c in config.forget_classes if c not in names]
        if unknown or not config.forget_classes:
            raise InputError(f"--forget-classes: unknown or missing class {unknown[0] if unknown else ''!r}; "
                             f"classes: {', '.join(classes)}")
        ids = torch.tensor([names[c] for c in config.forget_classes])
        return torch.isin(y, ids)
    raise InputError(f"--forget must be random or classes, got {config.forget!r}")


def train(net: Normalized, x: torch.Tensor, y: torch.Tensor, config: PrepareConfig,
          codes: torch.Tensor | None, device: str = "cpu", progress: bool = False) -> None:
    """Train ``net`` on float images ``x`` (N, C, H, W) in [0, 1]; with ``codes`` each image is
    swapped for its class's code with probability ``config.mnemonic_mix``."""
    g = torch.Generator().manual_seed(config.seed)
    sample = Sampler(Split(x, y, "train"), config.batch_size, g, device)
    codes_d = codes.to(device) if codes is not None else None

    def loss(_: int) -> torch.Tensor:
        xb, yb = sample()
        if codes_d is not None and config.mnemonic_mix > 0:
            swap = (torch.rand(len(yb), generator=g) < config.mnemonic_mix).to(device)
            xb = torch.where(swap[:, None, None, None], codes_d[yb], xb)
        return F.cross_entropy(net(xb), yb)

    run_steps(net, loss, make_optimizer("adam", net.parameters(), config.lr),
              steps_for(len(y), config.batch_size, config.epochs), freeze_norms=False,
              progress=progress, desc="original")


def prepare(out: str | Path, config: PrepareConfig, device: str = "cpu", progress: bool = False) -> dict:
    """Train the original on a seeded subset and write ``out/model.pt``, ``out/forget/``,
    ``out/retain/``, ``out/test/`` and ``out/split.json``. Returns the summary written there."""
    t0 = time.time()
    out = Path(out)
    ds = datasets.load(config.dataset, root=config.data_root)
    g = torch.Generator().manual_seed(config.seed)
    if not 0 < config.train_size <= len(ds.y_train) or not 0 < config.test_size <= len(ds.y_test):
        raise InputError(f"--train-size must be in [1, {len(ds.y_train)}], --test-size in [1, {len(ds.y_test)}]")
    train_idx = torch.randperm(len(ds.y_train), generator=g)[: config.train_size].sort().values
    test_idx = torch.randperm(len(ds.y_test), generator=g)[: config.test_size].sort().values
    x_u8, y = ds.x_train[train_idx], ds.y_train[train_idx]
    is_forget = choose_forget(y, ds.classes, config, g)
    x = datasets.to_float(x_u8)
    c = x.shape[1]
    pre = Preprocess(tuple(x.shape[2:]), c, tuple(x.mean((0, 2, 3)).tolist()),
                     tuple(x.std((0, 2, 3)).tolist()))
    codes = torch.rand((len(ds.classes), *pre.shape), generator=g) if config.mnemonic_mix > 0 else None
    arch = ArchSpec("cnn", config.width, config.depth, config.activation)
    torch.manual_seed(config.seed)
    net = Normalized(nets.build(arch, pre.shape, len(ds.classes)), pre).to(device)
    train(net, x, y, config, codes, device, progress)

    test = Split(datasets.to_float(ds.x_test[test_idx]), ds.y_test[test_idx], "test")
    fs = Split(x[is_forget], y[is_forget], "forget")
    rs = Split(x[~is_forget], y[~is_forget], "retain")
    scores = metrics.evaluate(net, fs, rs, test, device, config.seed)
    train_config = {"prepare": config.to_dict(), "optimizer": "adam"}
    save_own(out / "model.pt", net.net.cpu(), arch, ds.classes, pre, train_config, codes)
    for name, mask in (("forget", is_forget), ("retain", ~is_forget)):
        forget_io.write_folder(out / name, x_u8[mask], y[mask], ds.classes)
    forget_io.write_folder(out / "test", ds.x_test[test_idx], ds.y_test[test_idx], ds.classes)
    summary = {"config": config.to_dict(), "original": scores, "train_indices": train_idx.tolist(),
               "forget_indices": train_idx[is_forget].tolist(), "test_indices": test_idx.tolist(),
               "sizes": {"forget": int(is_forget.sum()), "retain": int((~is_forget).sum()),
                         "test": len(test_idx)}, "seconds": time.time() - t0}
    atomic_write(out / "split.json", lambda tmp: Path(tmp).write_text(json.dumps(summary)))
    return summary
