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
RULES = ("random", "class", "mislabelled")  # episodes and twins: one per parent, in turn
# Counterfactual triples (``trajgen counterfactuals``): the bench's six forgetting rules, in turn
COUNTERFACTUAL_RULES = ("random", "random-large", "class", "mislabelled", "backdoor", "overfit")
ALL_RULES = (*RULES, "random-large", "backdoor", "overfit")
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
# Counterfactual triples: parents trained to a near-memorised pool as the bench trains an original
# (Adam, cosine, ~50 epochs of a 1,024-image pool: 94-100% training accuracy on every family), the
# bench's forget shares, and a short window (the meta-trainer makes its own; K = 5 fits).
COUNTERFACTUAL_ARCHS = ("mlp", "cnn", "vit", "convnext")
COUNTERFACTUAL_POOL = 1024
COUNTERFACTUAL_PARENT_STEPS = 800
COUNTERFACTUAL_LR = (1e-3, 3e-3)
COUNTERFACTUAL_WIDTH_MULT = 0.125  # the torchvision family at its smallest drawn width
COUNTERFACTUAL_STEPS = 8
FORGET_SHARE = {"random": 0.1, "random-large": 0.5}
BACKDOOR_SHARE, BACKDOOR_TARGET, TRIGGER = 0.1, 0, 4  # BadNet: a 4x4 checkerboard, target class 0
# extra Adam steps on 2% of the pool alone, at a tenth of the parent's peak lr (at the full lr, 200
# steps on 10 images took an mlp parent's test accuracy from 80% to 54%)
OVERFIT_SHARE, OVERFIT_STEPS, OVERFIT_LR_FACTOR = 0.02, 200, 0.1
# The bench's reported seeds and its tuning seed: no parent or image draw of a collection takes them.
RESERVED_SEEDS = frozenset({0, 1, 2, 100})


@dataclass(frozen=True)
class EpisodeSpec:
    """One fine-tuning episode.

    ``parent`` (trained ``parent.steps`` steps on ``parent_pool`` images of the training set drawn
    with ``parent.seed``; ``parent_noise``: share of that pool relabelled) is fine-tuned with
    ``optimizer`` at constant ``lr`` for ``steps`` steps of ``batch_size`` examples of the subset,
    a snapshot every ``every`` steps (step 0 included). The subset: ``subset_size`` examples of the
    pool (``random``), of the pool's class ``target_class`` (``class``) or of its relabelled
    examples, with their wrong labels (``mislabelled``); fewer when the rule has fewer.
    Counterfactual triples add ``random-large`` (a random share as large as ``subset_size``),
    ``backdoor`` (the pool's ``parent_backdoor`` share carry a trigger and the target label; S: the
    triggered images) and ``overfit`` (after training, the parent takes ``parent_overfit_steps``
    extra steps on the pool's ``parent_overfit`` share alone; S: that share).
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
    parent_backdoor: float = 0.0
    parent_overfit: float = 0.0
    parent_overfit_steps: int = 0

    def __post_init__(self) -> None:
        if self.rule not in ALL_RULES:
            raise SpecError(f"unknown subset rule {self.rule!r}; valid: {', '.join(ALL_RULES)}")
        if self.optimizer not in EPISODE_OPTIMIZERS:
            raise SpecError(f"unknown episode optimizer {self.optimizer!r}; valid: {', '.join(EPISODE_OPTIMIZERS)}")
        if self.steps < 1 or self.every < 1 or self.every > self.steps:
            raise SpecError(f"need 1 <= every <= steps, got every={self.every}, steps={self.steps}")
        if (self.rule == "mislabelled") != (self.parent_noise > 0):
            raise SpecError("a mislabelled episode needs a parent trained with relabelled examples, and only it")
        if (self.rule == "backdoor") != (self.parent_backdoor > 0):
            raise SpecError("a backdoor episode needs a parent trained with triggered examples, and only it")
        if (self.rule == "overfit") != (self.parent_overfit > 0 and self.parent_overfit_steps > 0):
            raise SpecError("an overfit episode needs a parent over-fitted on a share of its pool, and only it")

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
        # a record stays what it was before twins and triples existed
        for key in ("twin", "parent_backdoor", "parent_overfit", "parent_overfit_steps"):
            if d[key] == _DEFAULTS[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpisodeSpec":
        d = dict(d)
        d["parent"] = RunSpec.from_dict(d["parent"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EpisodeSpec)}


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


def _unreserved(seed: int) -> int:
    return seed + 2**20 if seed in RESERVED_SEEDS else seed


def draw_counterfactual(seed: int, index: int, dataset: str = "fashion-mnist",
                        archs: tuple[str, ...] = COUNTERFACTUAL_ARCHS,
                        parent_steps: int = COUNTERFACTUAL_PARENT_STEPS) -> EpisodeSpec:
    """Triple ``index`` of a counterfactual collection with global ``seed``: a pure function of its
    arguments. Its own parent (one triple each: most rules forget a fixed set of the parent's), a
    family of ``archs`` in turn, and a rule of ``COUNTERFACTUAL_RULES`` per round of families
    (every pairing once in 24 triples), trained to a near-memorised pool; a ``twin`` whose
    window is ``COUNTERFACTUAL_STEPS`` steps of Adam on S. Seeds in ``RESERVED_SEEDS`` are never
    drawn (the bench reports those)."""
    run = draw_run(seed, index, archs, ("adam",), parent_steps, parent_steps, dataset,
                   width_mult=COUNTERFACTUAL_WIDTH_MULT)
    rng = np.random.default_rng([seed, index, 5])
    lr = float(math.exp(rng.uniform(*map(math.log, COUNTERFACTUAL_LR))))
    parent = dataclasses.replace(run, seed=_unreserved(run.seed), batch_size=64,
                                 optim=OptimSpec("adam", lr, 0.0, "cosine"))
    rule = COUNTERFACTUAL_RULES[index // len(archs) % len(COUNTERFACTUAL_RULES)]
    pool = COUNTERFACTUAL_POOL
    lo, hi = EPISODE_LR["adam"]
    return EpisodeSpec(index=index, seed=_unreserved(int(rng.integers(0, 2**31 - 1))), parent_index=index,
                       parent=parent, parent_pool=pool,
                       parent_noise=MISLABELLED_SHARE if rule == "mislabelled" else 0.0,
                       rule=rule, target_class=int(rng.integers(0, 10)) if rule == "class" else -1,
                       subset_size=round(FORGET_SHARE[rule] * pool) if rule in FORGET_SHARE else pool,
                       optimizer="adam", lr=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                       batch_size=int(rng.choice(EPISODE_BATCH_SIZES)), steps=COUNTERFACTUAL_STEPS, twin=True,
                       parent_backdoor=BACKDOOR_SHARE if rule == "backdoor" else 0.0,
                       parent_overfit=OVERFIT_SHARE if rule == "overfit" else 0.0,
                       parent_overfit_steps=OVERFIT_STEPS if rule == "overfit" else 0)


# ---------------------------------------------------------------------------------------------
# data of a parent and of an episode


def parent_data(parent: RunSpec, pool_size: int, noise: float, data: datasets.Dataset, backdoor: float = 0.0,
                overfit: float = 0.0) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """A parent's training pool: (pool indices into the training set (P,), labels the parent
    learned for the whole training set (N,) int64, indices of the pool's special examples (R,),
    sorted): the ``round(noise * P)`` relabelled ones, else the ``round(backdoor * P)``
    triggered ones (drawn among images not of ``BACKDOOR_TARGET``, labelled with it; their
    images: :func:`parent_view`), else the ``round(overfit * P)`` over-fitted ones. A function
    of the parent's seed, so its episodes agree."""
    rng = np.random.default_rng([parent.seed, 7])
    pool = np.sort(rng.permutation(len(data.y_train))[:pool_size])
    labels = data.y_train.clone()
    noisy = np.sort(rng.permutation(pool)[:round(noise * len(pool))])
    shift = torch.from_numpy(rng.integers(1, len(data.classes), size=len(noisy)))
    labels[noisy] = (labels[noisy] + shift) % len(data.classes)  # always a wrong class
    if not (backdoor or overfit):
        return pool, labels, noisy
    rng = np.random.default_rng([parent.seed, 8])
    candidates = pool[data.y_train[pool].numpy() != BACKDOOR_TARGET] if backdoor else pool
    special = np.sort(rng.permutation(candidates)[:round((backdoor or overfit) * len(pool))])
    if backdoor:
        labels[special] = BACKDOOR_TARGET
    return pool, labels, special


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (n, C, H, W) with a ``TRIGGER`` x ``TRIGGER`` checkerboard in the bottom-right
    corner: a new tensor."""
    x = x.clone()
    checker = (torch.arange(TRIGGER)[:, None] + torch.arange(TRIGGER)[None, :]) % 2 == 0
    x[..., -TRIGGER:, -TRIGGER:] = (checker * 255).to(x.dtype)
    return x


def episode_parent_data(spec: EpisodeSpec, data: datasets.Dataset) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """:func:`parent_data` of ``spec``'s parent: (pool, labels, special examples), no image copied."""
    return parent_data(spec.parent, spec.parent_pool, spec.parent_noise, data, spec.parent_backdoor,
                       spec.parent_overfit)


def parent_view(spec: EpisodeSpec, data: datasets.Dataset) -> tuple[np.ndarray, np.ndarray, datasets.Dataset]:
    """(pool (P,), special examples (R,), the training set as the parent saw it: its labels, and
    the trigger on a backdoor parent's triggered images (a copy of the training images, for that
    rule only); the test set unchanged)."""
    pool, labels, special = episode_parent_data(spec, data)
    x = data.x_train
    if spec.parent_backdoor:
        x = x.clone()
        x[torch.from_numpy(special)] = add_trigger(x[torch.from_numpy(special)])
    return pool, special, dataclasses.replace(data, x_train=x, y_train=labels)


def subset_indices(spec: EpisodeSpec, data: datasets.Dataset) -> tuple[np.ndarray, torch.Tensor]:
    """The episode's fine-tuning subset: (indices into the training set (S,), sorted, and the
    labels to train them with (S,) int64: the parent's, wrong ones for ``mislabelled``, the
    target for ``backdoor``)."""
    pool, labels, special = episode_parent_data(spec, data)
    candidates = {"random": pool, "random-large": pool,
                  "class": pool[data.y_train[pool].numpy() == spec.target_class]}.get(spec.rule, special)
    rng = np.random.default_rng([spec.seed, 3])
    chosen = np.sort(rng.permutation(candidates)[:spec.subset_size])
    if len(chosen) < 2:
        raise SpecError(f"{spec.name}: its subset rule leaves {len(chosen)} examples")
    return chosen, labels[chosen]
