"""What an episode is: its frozen spec, drawn once from (collection seed, episode index), and the
data it is drawn on (a parent's training pool and the episode's subset). Shared by
:mod:`trajgen.episodes` (fine-tuning and writing episodes) and :mod:`trajgen.twins` (their
counterfactual twins), neither of which this module imports.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trajgen import data as datasets
from trajgen.spec import OptimSpec, RunSpec, SpecError, draw_run

EPISODE_KIND = "episode"
TWIN_KIND = "twin"
RULES = ("random", "class", "mislabelled")
EPISODE_OPTIMIZERS = ("adam", "sgd")
# Log-uniform fine-tuning lr per optimizer: Adam around invwnn+'s range (its default 1.6e-3).
EPISODE_LR = {"adam": (3e-4, 5e-3), "sgd": (3e-3, 1e-1)}
PARENT_ARCHS = ("cnn", "vit")
PARENT_OPTIMIZERS = ("adam", "adamw", "momentum")  # the optimizers whose runs rarely diverge
PARENT_STEPS = 600
PARENT_POOL = 6000  # training images a parent learns (several epochs in PARENT_STEPS steps)
MISLABELLED_SHARE = 0.2  # share of a mislabelled-rule parent's pool trained with a wrong label
SUBSET_SIZES = (128, 256, 512)
EPISODE_STEPS = (96, 128, 192)
EPISODE_BATCH_SIZES = (32, 64, 128)
# A twin's episode only needs the first windows (where the applier's loop starts from the original).
TWIN_STEPS = 32


@dataclass(frozen=True)
class EpisodeSpec:
    """One fine-tuning episode.

    ``parent`` (trained ``parent.steps`` steps on ``parent_pool`` images of the training set drawn
    with ``parent.seed``; ``parent_noise``: share of that pool relabelled) is fine-tuned with
    ``optimizer`` at constant ``lr`` for ``steps`` steps of ``batch_size`` examples of the subset,
    a snapshot every ``every`` steps (step 0 included). The subset: ``subset_size`` examples of the
    pool (``random``), of the pool's class ``target_class`` (``class``) or of its relabelled
    examples, with their wrong labels (``mislabelled``); fewer when the rule has fewer.
    """

    index: int
    seed: int
    parent_index: int
    parent: RunSpec
    parent_pool: int
    parent_noise: float
    rule: str
    target_class: int
    subset_size: int
    optimizer: str
    lr: float
    batch_size: int
    steps: int
    every: int = 1
    twin: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise SpecError(f"unknown subset rule {self.rule!r}; valid: {', '.join(RULES)}")
        if self.optimizer not in EPISODE_OPTIMIZERS:
            raise SpecError(f"unknown episode optimizer {self.optimizer!r}; valid: {', '.join(EPISODE_OPTIMIZERS)}")
        if self.steps < 1 or self.every < 1 or self.every > self.steps:
            raise SpecError(f"need 1 <= every <= steps, got every={self.every}, steps={self.steps}")
        if (self.rule == "mislabelled") != (self.parent_noise > 0):
            raise SpecError("a mislabelled episode needs a parent trained with relabelled examples, and only it")

    @property
    def name(self) -> str:
        return f"{TWIN_KIND if self.twin else EPISODE_KIND}-{self.index:06d}"

    @property
    def parent_name(self) -> str:
        return f"parent-{self.parent_index:06d}"

    def run_spec(self) -> "EpisodeRun":
        """The fine-tuning as a trajgen run spec (what the store's ``spec`` attribute holds)."""
        p = self.parent
        return (TwinRun if self.twin else EpisodeRun)(index=self.index, seed=self.seed, arch=p.arch,
                          optim=OptimSpec(self.optimizer, self.lr, 0.0, "constant"),
                          batch_size=self.batch_size, init=p.init, steps=self.steps, every=self.every,
                          dataset=p.dataset)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.twin:
            del d["twin"]  # an episode's record stays what it was before twins existed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpisodeSpec":
        d = dict(d)
        d["parent"] = RunSpec.from_dict(d["parent"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class EpisodeRun(RunSpec):
    """An episode's fine-tuning as a :class:`RunSpec`; only its group name differs."""

    @property
    def name(self) -> str:
        return f"{EPISODE_KIND}-{self.index:06d}"


class TwinRun(RunSpec):
    """A twin episode's fine-tuning as a :class:`RunSpec` (see :mod:`trajgen.twins`)."""

    @property
    def name(self) -> str:
        return f"{TWIN_KIND}-{self.index:06d}"


def draw_episode(seed: int, index: int, per_parent: int = 4, dataset: str = "fashion-mnist",
                 archs: tuple[str, ...] = PARENT_ARCHS, parent_steps: int = PARENT_STEPS,
                 twin: bool = False) -> EpisodeSpec:
    """The spec of episode ``index`` of a collection with global ``seed``: a pure function of its
    arguments. Parent ``p = index // per_parent`` is run ``p`` of ``draw_run(seed, ...)`` (cnn and
    vit in turn, small widths); its subset rule cycles random, class, mislabelled with ``p``. A
    ``twin`` episode (:mod:`trajgen.twins`) is the same draw fine-tuned for ``TWIN_STEPS`` steps."""
    if per_parent < 1:
        raise SpecError(f"episodes per parent must be at least 1, got {per_parent}")
    p = index // per_parent
    parent = draw_run(seed, p, archs, PARENT_OPTIMIZERS, parent_steps, parent_steps, dataset)
    rule = RULES[p % len(RULES)]
    rng = np.random.default_rng([seed, index, 2])
    optimizer = "adam" if rng.random() < 0.75 else "sgd"
    lo, hi = EPISODE_LR[optimizer]
    return EpisodeSpec(index=index, seed=int(rng.integers(0, 2**31 - 1)), parent_index=p, parent=parent,
                       parent_pool=PARENT_POOL, parent_noise=MISLABELLED_SHARE if rule == "mislabelled" else 0.0,
                       rule=rule, target_class=int(rng.integers(0, 10)) if rule == "class" else -1,
                       subset_size=int(rng.choice(SUBSET_SIZES)), optimizer=optimizer,
                       lr=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                       batch_size=int(rng.choice(EPISODE_BATCH_SIZES)),
                       steps=TWIN_STEPS if twin else int(rng.choice(EPISODE_STEPS)), twin=twin)


# ---------------------------------------------------------------------------------------------
# data of a parent and of an episode


def parent_data(parent: RunSpec, pool_size: int, noise: float,
                data: datasets.Dataset) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """A parent's training pool: (pool indices into the training set (P,), labels the parent
    learned for the whole training set (N,) int64, indices of the relabelled pool examples (R,),
    ``round(noise * P)`` of them). A function of the parent's seed, so its episodes agree."""
    rng = np.random.default_rng([parent.seed, 7])
    pool = np.sort(rng.permutation(len(data.y_train))[:pool_size])
    labels = data.y_train.clone()
    noisy = np.sort(rng.permutation(pool)[:round(noise * len(pool))])
    shift = torch.from_numpy(rng.integers(1, len(data.classes), size=len(noisy)))
    labels[noisy] = (labels[noisy] + shift) % len(data.classes)  # always a wrong class
    return pool, labels, noisy


def subset_indices(spec: EpisodeSpec, data: datasets.Dataset) -> tuple[np.ndarray, torch.Tensor]:
    """The episode's fine-tuning subset: (indices into the training set (S,), sorted, and the
    labels to train them with (S,) int64: the parent's, wrong ones for ``mislabelled``)."""
    pool, labels, noisy = parent_data(spec.parent, spec.parent_pool, spec.parent_noise, data)
    candidates = {"random": pool, "class": pool[data.y_train[pool].numpy() == spec.target_class],
                  "mislabelled": noisy}[spec.rule]
    rng = np.random.default_rng([spec.seed, 3])
    chosen = np.sort(rng.permutation(candidates)[:spec.subset_size])
    if len(chosen) < 2:
        raise SpecError(f"{spec.name}: its subset rule leaves {len(chosen)} examples")
    return chosen, labels[chosen]
