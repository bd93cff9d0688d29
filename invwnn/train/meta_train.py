"""``invwnn meta-train``: the meta-trained rewinder (:mod:`invwnn.rewind.meta`, trained through
:mod:`invwnn.train.meta_loop`) from a store of counterfactual triples (``trajgen counterfactuals``),
its held-out evaluation and its checkpoint.

The triples split by parent: every triple of ``holdout_archs`` (an unseen family), a share of the
other parents, and the rest (training). The line's horizon is tuned on training triples first; the
rewinder starts as that line and each step draws the loop's settings over invwnn+'s search ranges
(:data:`SETTINGS_SPACE`; repair steps 0 is the forget-only loop). The evaluation compares, on both
held-out sets and under the same draws and batches, the distance after ``iterations`` iterations
for the meta rewinder, the tuned line, the reset control and the shipped K = 5 regression predictor.
"""
from __future__ import annotations

import functools
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from invwnn.inputs.splits import Split
from invwnn.errors import InputError
from invwnn.rewind.meta import MetaConfig, MetaNet, save
from invwnn.rewind.predictor import default_checkpoint, load_learned
from invwnn.rewind.rewinders import LinearRewinder, ResetRewinder
from invwnn.train.meta_loop import LoopSettings, Triple, evaluate, meta_train
from trajgen import data as datasets
from trajgen import store as trajstore
from trajgen.episode_spec import EpisodeSpec, parent_view, subset_indices
from trajgen.nets import layer_table, load_flat_buffers, load_flat_weights
from trajgen.train import build_model

# invwnn+'s search ranges (invwnn.bench.search; a test keeps them equal): (kind, lo, hi) or choices
SETTINGS_SPACE: dict[str, tuple] = {"lr": ("log", 3e-4, 5e-3), "repair_steps": ("choice", [0, 2, 4, 8]),
                                    "repair_lr": ("log", 3e-4, 3e-3), "batch_size": ("choice", [64, 128])}
HORIZONS = (0.5, 1.0, 2.0, 3.0, 4.0)  # the line's horizons tried before training (the search's range)
EVAL_DRAWS = 2  # draws of the loop's settings per triple when tuning the line and evaluating


def objective_text(unrolled: int = 1) -> str:
    """What the checkpoint says it was trained on."""
    after = "one unrolled iteration" if unrolled == 1 else f"{unrolled} unrolled iterations"
    return (f"KL(counterfactual || unlearned) of the predictive distributions after {after}, summed over S, "
            "a retain sample and held-out test images (nats)")


@dataclass(frozen=True)
class MetaTrainConfig:
    """``steps`` Adam steps at ``lr`` on the rewinder (``k``, ``width``, ``context``: :class:`MetaConfig`);
    ``holdout_archs``: families held out; ``holdout_every``: every n-th parent of the others held
    out; ``eval_triples``: at most this many per held-out set and for tuning the line;
    ``retain_images`` / ``heldout_images``: per triple; ``lead``, ``unrolled``: as
    :func:`invwnn.train.meta_loop.meta_train`; ``iterations`` before the distance is measured."""

    store: str = "data/counterfactuals.zarr"
    out: str = "data/meta_rewinder.pt"
    steps: int = 600
    lr: float = 3e-3
    k: int = 5
    width: int = 32
    context: tuple[str, ...] = ()
    holdout_archs: tuple[str, ...] = ("convnext",)
    holdout_every: int = 5
    first: int | None = None
    eval_triples: int = 24
    retain_images: int = 256
    heldout_images: int = 256
    lead: int = 2
    unrolled: int = 1
    iterations: int = 3
    data_root: str | None = None
    seed: int = 0
    threads: int = 1


def draw_settings(rng: random.Random) -> LoopSettings:
    """One draw of the loop's settings over :data:`SETTINGS_SPACE` (Adam repair, as invwnn+)."""
    values = {}
    for name, (kind, *arg) in SETTINGS_SPACE.items():
        values[name] = (math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))) if kind == "log"
                        else rng.choice(arg[0]))
    return LoopSettings(**values, repair_optimizer="adam")


def load_triple(store_path: str, name: str, retain_images: int = 256, heldout_images: int = 256,
                data_root: str | None = None) -> Triple:
    """Triple ``name`` of a counterfactual store: the parent rebuilt from the window's first
    snapshot and its norm statistics (eval mode), the twin's weights and statistics, S as the
    parent learned it, ``retain_images`` of the pool without S and ``heldout_images`` test images
    (both drawn by the triple's seed)."""
    root = trajstore.open_store(store_path)
    group = root["runs"][name]
    if "counterfactual" not in group:
        raise InputError(f"{store_path}: run {name} holds no counterfactual (make the store with trajgen counterfactuals)")
    spec = EpisodeSpec.from_dict(group.attrs["episode"])
    data = datasets.load_cached(spec.parent.dataset, data_root)
    model = build_model(spec.parent, data)
    table = layer_table(model)
    load_flat_weights(model, torch.from_numpy(group["history"][:, 0]), table)
    twin = build_model(spec.parent, data)
    load_flat_weights(twin, torch.from_numpy(group["counterfactual"][:]), table)
    if "parent_buffers" in group:
        load_flat_buffers(model, torch.from_numpy(group["parent_buffers"][:]))
        load_flat_buffers(twin, torch.from_numpy(group["counterfactual_buffers"][:]))
    model.eval()
    subset, labels = subset_indices(spec, data)
    pool, _, view = parent_view(spec, data)
    g = torch.Generator().manual_seed(spec.seed)
    rest = torch.from_numpy(np.setdiff1d(pool, subset))
    rest = rest[torch.randperm(len(rest), generator=g)[:retain_images]]
    held = torch.randperm(len(data.y_test), generator=g)[:heldout_images]

    def split(x: torch.Tensor, y: torch.Tensor, source: str) -> Split:
        return Split(datasets.to_float(x), y.long(), source)

    return Triple(model, {n: p.detach() for n, p in twin.named_parameters()},
                  split(view.x_train[torch.from_numpy(subset)], labels, f"{name} S"),
                  split(view.x_train[rest], view.y_train[rest], f"{name} retain"),
                  split(data.x_test[held], data.y_test[held], f"{name} held-out"),
                  {n: b.detach() for n, b in twin.named_buffers() if b.is_floating_point()})


class TripleSource:
    """The triples ``names`` of a store as a sequence, each loaded on first use (a few are kept)."""

    def __init__(self, config: MetaTrainConfig, names: list[str]):
        self.names = names
        self._load = functools.lru_cache(maxsize=32)(
            lambda name: load_triple(config.store, name, config.retain_images, config.heldout_images, config.data_root))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Triple:
        return self._load(self.names[i])


def split_names(store_path: str, holdout_archs: tuple[str, ...], holdout_every: int,
                first: int | None = None) -> dict[str, list[str]]:
    """The store's complete, finite twin runs (of index below ``first``) as ``train`` /
    ``heldout_parents`` / ``heldout_family``."""
    root = trajstore.open_store(store_path)
    out: dict[str, list[str]] = {"train": [], "heldout_parents": [], "heldout_family": []}
    for name in trajstore.complete_in(root, trajstore.index(root)):
        attrs = root["runs"][name].attrs
        if "twin" not in attrs:
            continue
        spec = EpisodeSpec.from_dict(attrs["episode"])
        if first is not None and spec.index >= first:
            continue
        if spec.parent.arch.family in holdout_archs:
            out["heldout_family"].append(name)
        elif spec.parent_index % holdout_every == holdout_every - 1:
            out["heldout_parents"].append(name)
        else:
            out["train"].append(name)
    if not out["train"]:
        raise InputError(f"{store_path} holds no counterfactual triples to train on (trajgen counterfactuals makes them)")
    return out


def _spread(names: list[str], n: int, seed: int) -> list[str]:
    return sorted(random.Random(seed).sample(names, min(n, len(names))))


def distances(rewinder: Any, triples: TripleSource, settings: list[LoopSettings], seed: int,
              iterations: int) -> list[float]:
    """The objective per (draw, triple) after ``iterations`` loop iterations; triple ``i`` under
    draw ``j`` runs on the batches of seed ``seed + j + i``, the same for every rewinder."""
    return [evaluate(rewinder, [triples[i]], s, seed + j + i, iterations)
            for j, s in enumerate(settings) for i in range(len(triples))]


def compare(rewinders: dict[str, Any], triples: TripleSource, draws: int, seed: int,
            iterations: int = 1) -> dict[str, float]:
    """Mean :func:`distances` of each rewinder over ``triples`` x ``draws`` drawn settings."""
    rng = random.Random(seed)
    settings = [draw_settings(rng) for _ in range(draws)]
    return {name: statistics.fmean(distances(r, triples, settings, seed, iterations)) for name, r in rewinders.items()}


def run(config: MetaTrainConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune the line, meta-train, evaluate on both held-out sets, write the checkpoint; returns its record."""
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    names = split_names(config.store, config.holdout_archs, config.holdout_every, config.first)
    train = TripleSource(config, names["train"])
    tune = TripleSource(config, _spread(names["train"], config.eval_triples, config.seed))
    line_scores = compare({h: LinearRewinder(h) for h in HORIZONS}, tune, EVAL_DRAWS, config.seed, config.iterations)
    horizon = min(line_scores, key=line_scores.get)
    log(f"line horizon {horizon} (objective {line_scores[horizon]:.4f} on {len(tune)} training triples)")
    rewinder = MetaNet(MetaConfig(config.k, horizon, config.width, config.context))
    bar = tqdm(total=config.steps, desc="meta-train", unit="step", disable=not progress)
    history = meta_train(rewinder, train, config.steps, config.lr, draw_settings, config.seed,
                         log=lambda step, loss: (bar.update(1), bar.set_postfix(objective=f"{loss:.3f}")),
                         lead=config.lead, unrolled=config.unrolled)
    bar.close()
    train_seconds = time.perf_counter() - started

    controls = {"meta": rewinder, "line": LinearRewinder(horizon), "reset": ResetRewinder(),
                "regression": load_learned(default_checkpoint(config.k))}
    evaluation = {}
    for part in ("heldout_parents", "heldout_family"):
        triples = TripleSource(config, _spread(names[part], config.eval_triples, config.seed))
        if len(triples):
            scores = compare(controls, triples, EVAL_DRAWS, config.seed + 1, config.iterations)
            evaluation[part] = {"triples": len(triples), **scores, "meta_over_line": scores["meta"] / scores["line"]}
            log(f"{part} ({len(triples)} triples): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    window = max(1, min(50, len(history) // 2))
    record = {
        "version": 1, "config": asdict(rewinder.config), "objective": objective_text(config.unrolled),
        "unroll": {"iterations": config.unrolled,
                   "lead_iterations": f"0..{config.lead} run as data before them, drawn per step",
                   "between_iterations": "straight through each forget window (d window / d start = identity)",
                   "evaluated_after": config.iterations, "forget_steps": config.k - 1, "forget_optimizer": "adam",
                   "repair": "first order (gradients taken at the rewound weights, not differentiated), "
                             "Adam from fresh moments", "settings_space": SETTINGS_SPACE,
                   "window": "data (the forget steps do not depend on the rewinder within an iteration)"},
        "data": {"store": config.store, "triples": {k: len(v) for k, v in names.items()},
                 "holdout_archs": list(config.holdout_archs), "holdout_every": config.holdout_every,
                 "first": config.first,
                 "train_names": names["train"]},
        "training": {"steps": config.steps, "lr": config.lr, "seed": config.seed, "seconds": round(train_seconds, 1),
                     "objective_first": sum(history[:window]) / window, "objective_last": sum(history[-window:]) / window,
                     "line_horizons": line_scores, "objective_history": [round(v, 5) for v in history]},
        "evaluation": evaluation,
    }
    save(rewinder, record, config.out)
    return record

