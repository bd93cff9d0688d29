"""Benchmark scenarios: which training data the original sees and what it must forget.

Every builder is ``(config, seed, dataset) -> Scenario`` and is deterministic in ``seed``. Images
are float32 ``(N, C, H, W)`` in [0, 1]; labels int64 ``(N,)``.

- ``random10`` / ``random50``: forget a random 10% / 50% of the training subset.
- ``paper``: the paper's headline setting (BRIEF Table 1): CIFAR-style ResNet-18 on CIFAR-10, the
  whole training set, forget a random 50%, the whole test set, no validation split (nothing of the
  training pool is left over). ``--arch``, ``--width``, ``--dataset`` (``fashion-mnist-rgb`` where
  CIFAR-10 cannot be had), ``--train-size`` reduce it; the training recipe is this project's (Adam).
- ``class``: forget every training image of one class.
- ``label-noise``: 20% of the training subset get a uniformly random *wrong* label; forget them.
- ``overfit``: after normal training the original takes ``overfit_steps`` extra Adam steps on a 1%
  subset alone (our reading of the paper's "1% of the data with excessive iterations"); forget it.
- ``backdoor``: BadNet. 20% of the training subset carry a checkerboard trigger in the bottom-right
  corner and the target label; forget them. Extra eval set: the test images of other classes with
  the trigger, labelled with the target (accuracy on it = attack success rate).

Every scenario also holds a **validation split** of ``val_size`` images drawn from the dataset's
*training* pool outside the scenario's training subset: hyperparameter search measures TA and MIA
on it (:meth:`Scenario.for_tuning`), so no choice ever sees a test image. ``Scenario.index``
records which pool images each role used; :meth:`Scenario.fingerprint` hashes them for reports.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from invwnn.inputs.splits import Split
from invwnn.errors import InputError
from trajgen import data as datasets


@dataclass(frozen=True)
class ScenarioConfig:
    """One scenario's data and original-training recipe. ``forget_fraction`` is the share of the
    training subset that is forgotten (random*, label-noise, overfit, backdoor); ``forget_class``
    the class index for ``class``; ``trigger_size`` the trigger's side in pixels; ``target_label``
    the backdoor's target class; ``mnemonic_mix`` the mnemonic-code mixing probability of the
    original (0 = off; the mnemonic method needs it). ``train_size`` / ``test_size`` 0 mean the
    dataset's whole training / test set. ``depth`` and ``activation`` apply to the small families
    and convnext (blocks per stage); the other torchvision families fix their own."""

    name: str
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    arch: str = "cnn"
    width: int = 16  # 20.6k parameters: the largest CNN whose 3-seed bench fits in 45 min on 2 cores
    depth: int = 2
    activation: str = "relu"
    train_size: int = 10000
    test_size: int = 2000
    val_size: int = 2000
    epochs: float = 20.0
    lr: float = 1e-3
    batch_size: int = 128
    forget_fraction: float = 0.1
    forget_class: int = 0
    overfit_steps: int = 0
    trigger_size: int = 4
    target_label: int = 0
    mnemonic_mix: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self, seed: int, *extra) -> str:
        """Content hash of this config, the seed and ``extra`` (JSON-able) settings."""
        blob = json.dumps([self.to_dict(), seed, list(extra)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Scenario:
    """Built data. ``x``/``y``: the original's training set as trained (noisy labels, triggers
    included); ``forget``: bool mask (N,) of what to forget; ``clean_y``: true labels (label-noise
    only); ``extras``: additional eval splits by name."""

    config: ScenarioConfig
    seed: int
    x: torch.Tensor
    y: torch.Tensor
    forget: torch.Tensor
    test: Split
    classes: tuple[str, ...]
    extras: dict[str, Split] = field(default_factory=dict)
    clean_y: torch.Tensor | None = None
    val: Split | None = None
    index: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def forget_split(self) -> Split:
        return Split(self.x[self.forget], self.y[self.forget], "forget")

    @property
    def retain_split(self) -> Split:
        return Split(self.x[~self.forget], self.y[~self.forget], "retain")

    def like_forget(self) -> Callable[[Split], Split] | None:
        """What makes held-out images like the forget set, for RMIA's held-out candidates
        (:func:`invwnn.audit.rmia.attack_splits`): label-noise, each image a wrong label drawn from
        this scenario's seed; backdoor, the images not of the target class with the trigger and
        the target label. None where the forget set is a sample of clean images (the attack keeps
        the held-out images of the forget set's classes)."""
        if self.config.name == "label-noise":
            seed, n = self.seed + VAL_SEED_OFFSET + 1, len(self.classes)
            return lambda split: Split(split.x, random_wrong(split.y, n, torch.Generator().manual_seed(seed)),
                                       "held-out, mislabelled")
        if self.config.name == "backdoor":
            return lambda split: triggered(split, self.config, "held-out, triggered")
        return None

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y), "forget": int(self.forget.sum()),
                "retain": int((~self.forget).sum()), "test": len(self.test),
                "val": len(self.val) if self.val is not None else 0,
                **{k: len(v) for k, v in self.extras.items()}}

    def for_tuning(self) -> "Scenario":
        """This scenario with the validation split in the test split's place and no test-built
        extras: what hyperparameter search measures, so that it never sees a test image."""
        if self.val is None or len(self.val) == 0:
            raise InputError("this scenario has no validation split (val_size 0)")
        index = {k: v for k, v in self.index.items() if k != "test"}
        return dataclasses.replace(self, test=self.val, extras={}, index=index)

    def fingerprint(self) -> dict[str, dict]:
        """Role -> pool, image count and sha256 of the sorted pool indices: which images each
        role used, in a form a report can hold (the forget set's is over training indices)."""
        roles = dict(self.index)
        if "train" in roles:
            pool, idx = roles["train"]
            roles["forget"] = (pool, idx[self.forget])
        return {role: {"pool": pool, "n": len(idx),
                       "sha256": hashlib.sha256(idx.to(torch.int64).numpy().tobytes()).hexdigest()}
                for role, (pool, idx) in sorted(roles.items())}


VAL_SEED_OFFSET = 104729  # the validation draw has its own generator: train/test/forget draws stay as before


def _subsets(config: ScenarioConfig, seed: int, ds):
    """(generator for the scenario's own draws, training images uint8, labels, test split,
    validation split, role -> (pool, indices))."""
    n_train, n_test = len(ds.y_train), len(ds.y_test)
    train_size, test_size = config.train_size or n_train, config.test_size or n_test
    if not 0 < train_size <= n_train or not 0 < test_size <= n_test:
        raise InputError(f"--train-size must be in [1, {n_train}], test size in [1, {n_test}]")
    if not 0 <= config.val_size <= n_train - train_size:
        raise InputError(f"validation size must be in [0, {n_train - config.train_size}] "
                         "(training-pool images outside the training subset)")
    g = torch.Generator().manual_seed(seed)
    train_idx = torch.randperm(n_train, generator=g)[: train_size].sort().values
    test_idx = torch.randperm(n_test, generator=g)[: test_size].sort().values
    test = Split(datasets.to_float(ds.x_test[test_idx]), ds.y_test[test_idx].clone(), "test")
    outside = torch.ones(n_train, dtype=torch.bool)
    outside[train_idx] = False
    pool = outside.nonzero().squeeze(1)
    gv = torch.Generator().manual_seed(seed + VAL_SEED_OFFSET)
    val_idx = pool[torch.randperm(len(pool), generator=gv)[: config.val_size]].sort().values
    val = Split(datasets.to_float(ds.x_train[val_idx]), ds.y_train[val_idx].clone(), "val")
    index = {"train": ("train", train_idx), "test": ("test", test_idx), "val": ("train", val_idx)}
    return g, ds.x_train[train_idx].clone(), ds.y_train[train_idx].clone(), test, val, index


def _random_mask(n: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    if not 0 < fraction < 1:
        raise InputError(f"forget fraction must be in (0, 1), got {fraction}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[: max(1, round(fraction * n))]] = True
    return mask


def random_wrong(y: torch.Tensor, n_classes: int, g: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each of ``y``."""
    return (y + torch.randint(1, n_classes, y.shape, generator=g)) % n_classes


def trigger_patch(size: int, channels: int) -> torch.Tensor:
    """The BadNet trigger: a ``size`` x ``size`` checkerboard of 255 and 0, uint8 (C, size, size).
    A checkerboard, not a white square, so no natural image carries it by accident."""
    i = torch.arange(size)
    board = ((i[:, None] + i[None, :]) % 2 == 0).to(torch.uint8) * 255
    return board.expand(channels, size, size).clone()


def add_trigger(x_u8: torch.Tensor, size: int) -> torch.Tensor:
    """Copy of uint8 images (N, C, H, W) with the trigger in the bottom-right corner."""
    out = x_u8.clone()
    out[:, :, -size:, -size:] = trigger_patch(size, x_u8.shape[1])
    return out


def triggered(split: Split, config: ScenarioConfig, name: str) -> Split:
    """``split``'s images not of the backdoor's target class, with the trigger and the target label."""
    keep = split.y != config.target_label
    x_u8 = (split.x[keep] * 255).round().to(torch.uint8)
    return Split(datasets.to_float(add_trigger(x_u8, config.trigger_size)),
                 torch.full((int(keep.sum()),), config.target_label), name)


def has_trigger(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bool (N,): which images (uint8, or float in [0, 1]) carry the trigger exactly."""
    patch = trigger_patch(size, x.shape[1])
    corner = x[:, :, -size:, -size:]
    if corner.is_floating_point():
        corner = (corner * 255).round().to(torch.uint8)
    return (corner == patch).flatten(1).all(1)


def _build(config: ScenarioConfig, seed: int, ds, kind: str) -> Scenario:
    g, x_u8, y, test, val, index = _subsets(config, seed, ds)
    n_classes = len(ds.classes)
    extras, clean_y = {}, None
    if kind in ("random", "overfit"):  # overfit's extra steps on the forget set are the original's recipe
        forget = _random_mask(len(y), config.forget_fraction, g)
    elif kind == "class":
        if not 0 <= config.forget_class < n_classes:
            raise InputError(f"forget class must be in [0, {n_classes - 1}], got {config.forget_class}")
        forget = y == config.forget_class
    elif kind == "label-noise":
        forget = _random_mask(len(y), config.forget_fraction, g)
        clean_y = y.clone()
        y[forget] = random_wrong(y[forget], n_classes, g)
    elif kind == "backdoor":
        forget = _random_mask(len(y), config.forget_fraction, g)
        x_u8[forget] = add_trigger(x_u8[forget], config.trigger_size)
        y[forget] = config.target_label
        extras["triggered_test"] = triggered(test, config, "triggered test")
    else:
        raise AssertionError(kind)
    return Scenario(config, seed, datasets.to_float(x_u8), y, forget, test, tuple(ds.classes), extras, clean_y,
                    val, index)


# name -> (how its forget set is made, scenario-specific defaults)
SCENARIOS: dict[str, tuple[str, dict]] = {
    "random10": ("random", {"forget_fraction": 0.1}),
    "random50": ("random", {"forget_fraction": 0.5}),
    "paper": ("random", {"forget_fraction": 0.5, "dataset": "cifar10", "arch": "resnet18", "width": 64,
                         "train_size": 0, "test_size": 0, "val_size": 0}),
    # the class scenario's original mixes in mnemonic codes (t_mix 0.1, the paper's MNIST value)
    # so that the mnemonic method can run; every method sees that same original
    "class": ("class", {"mnemonic_mix": 0.1}),
    "label-noise": ("label-noise", {"forget_fraction": 0.2}),
    "overfit": ("overfit", {"forget_fraction": 0.01, "overfit_steps": 400}),
    "backdoor": ("backdoor", {"forget_fraction": 0.2}),
}

# the scenarios with a validation split: what `invwnn tune` can search and the fair bench covers
# (paper trains on the whole training set, so nothing is left to validate on)
TUNABLE = tuple(name for name, (_, d) in SCENARIOS.items() if d.get("val_size", ScenarioConfig.val_size) > 0)

QUICK = {"train_size": 2000, "test_size": 1000, "val_size": 1000, "epochs": 8.0}
# the paper scenario keeps its missing validation split under --quick, so a small CIFAR-format
# folder suffices
QUICK_OVERRIDES = {"paper": {"val_size": 0}}


def scenario_config(name: str, quick: bool = False, **overrides) -> ScenarioConfig:
    """The named scenario's config: its defaults, then the quick sizes, then ``overrides``
    (None values ignored). Raises InputError for an unknown name or setting."""
    if name not in SCENARIOS:
        raise InputError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    names = {f.name for f in dataclasses.fields(ScenarioConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise InputError(f"unknown scenario setting(s) {', '.join(sorted(unknown))}")
    d = {**SCENARIOS[name][1], **(QUICK if quick else {}), **(QUICK_OVERRIDES.get(name, {}) if quick else {}),
         **{k: v for k, v in overrides.items() if v is not None}}
    return ScenarioConfig(name=name, **d)


def dataset(config: ScenarioConfig, download: bool = False):
    """``config``'s dataset, read once per process; with ``download`` torchvision may fetch it (into
    ``data/``, where the resolver looks next) when it is not on disk."""
    try:
        if download:
            return datasets.load(config.dataset, root=config.data_root, download=True)
        return datasets.load_cached(config.dataset, config.data_root)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(str(err).splitlines()[0]) from None


def build(config: ScenarioConfig, seed: int, ds=None) -> Scenario:
    """Build ``config``'s scenario for ``seed`` (``ds``: an already loaded dataset, or None)."""
    return _build(config, seed, dataset(config) if ds is None else ds, SCENARIOS[config.name][0])
