"""Fine-tuning episodes: the kind of trajectory an unlearning rewinder sees.

An *episode* starts from a trained *parent* model and fine-tunes it on a small subset of the data
the parent was trained on, recording every weight after every optimizer step (spacing 1), with the
optimizers and learning rates the applier (invwnn+) uses. Three subset rules mimic the forgetting
scenarios: ``random`` (random examples of the parent's training pool), ``class`` (examples of one
class) and ``mislabelled`` (examples whose label was wrong when the parent learned them; their
parent was trained with a share of its pool relabelled).

Everything random is drawn once into a frozen :class:`EpisodeSpec` from (collection seed, episode
index), as :func:`trajgen.spec.draw_run` draws runs. Parents are trajgen runs trained with
trajgen's own code (:func:`trajgen.train.snapshots`) on a seeded pool of training images; episodes
``i`` with the same ``i // per_parent`` share a parent, which a process trains once and caches.

Storage: an episode is a run group ``runs/episode-<index>`` of an ordinary trajgen store, written
with :class:`trajgen.store.RunWriter`. Its ``spec`` attribute is the :class:`RunSpec` of the
fine-tuning (the parent's architecture, the episode's optimizer, lr, batch size, steps, ``every=1``),
so every reader of runs (``invwnn train``, ``trajgen info``, ``trajgen verify``) reads it unchanged;
its extra attributes are ``kind = "episode"`` and ``episode`` (the :class:`EpisodeSpec` as a dict:
parent, subset rule, optimizer, lr, spacing). During fine-tuning, norm layers are frozen (affine
parameters and running statistics) as in the applier's loop, so their coordinates stay constant.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trajgen import data as datasets
from trajgen import store
from trajgen.collect import execute, resume
from trajgen.nets import NORM_TYPES, flat_weights, layer_table
from trajgen.episode_spec import (EPISODE_KIND, OVERFIT_LR_FACTOR, PARENT_STEPS, TWIN_KIND, EpisodeSpec, draw_counterfactual, draw_episode, parent_view, subset_indices)
from trajgen.spec import SpecError
from trajgen.train import Snapshot, accuracy, batches, build_model, keep_freed_memory, snapshots
from trajgen.twins import write_counterfactual


@functools.lru_cache(maxsize=2)
def _parent_state(spec_json: str, data_root: str | None) -> dict[str, torch.Tensor]:
    """The trained parent's state dict: ``trajgen.train.snapshots`` on its pool as the parent saw
    it (:func:`parent_view`), then an overfit parent's extra steps on its over-fitted share alone.
    Cached per process because episodes share parents (the key: the spec without its episode)."""
    spec = EpisodeSpec.from_dict(json.loads(spec_json))
    parent = spec.parent
    data = datasets.load_cached(parent.dataset, data_root)
    pool, special, view = parent_view(spec, data)
    pool_data = dataclasses.replace(view, x_train=view.x_train[pool], y_train=view.y_train[pool])
    model = build_model(parent, pool_data)
    for _ in snapshots(parent, model, pool_data):  # trajgen's training loop; snapshots unused
        pass
    if spec.parent_overfit_steps:
        extra = dataclasses.replace(parent, steps=spec.parent_overfit_steps, every=spec.parent_overfit_steps,
                                    optim=dataclasses.replace(parent.optim, schedule="constant",
                                                              lr=OVERFIT_LR_FACTOR * parent.optim.lr))
        positions = torch.from_numpy(np.searchsorted(pool, special))
        order = (positions[b] for b in batches(len(positions), min(parent.batch_size, len(positions)), parent.seed))
        for _ in snapshots(extra, model, pool_data, order):
            pass
    return {k: v.clone() for k, v in model.state_dict().items()}


def parent_key(spec: EpisodeSpec) -> str:
    """What decides an episode's parent, as JSON: the spec with its episode's own draws neutral."""
    return dataclasses.replace(spec, index=0, seed=0, parent_index=0, target_class=-1, subset_size=2,
                               optimizer="adam", lr=0.0, batch_size=1, steps=1, every=1, twin=False).to_json()


def parent_model(spec: EpisodeSpec, data_root: str | None = None) -> nn.Module:
    """A fresh copy of the episode's trained parent model."""
    data = datasets.load_cached(spec.parent.dataset, data_root)
    model = build_model(spec.parent, data)
    model.load_state_dict(_parent_state(parent_key(spec), data_root))
    return model


# ---------------------------------------------------------------------------------------------
# fine-tuning


def episode_batches(spec: EpisodeSpec, subset: np.ndarray) -> Iterator[np.ndarray]:
    """Endless minibatches of training-set indices, all from ``subset`` (S,): reshuffled every
    pass, ``min(batch_size, S)`` per batch."""
    for idx in batches(len(subset), min(spec.batch_size, len(subset)), spec.seed):
        yield subset[idx.numpy()]


def _freeze_norms(model: nn.Module) -> list[nn.Parameter]:
    """Put norm layers in eval mode and return the other parameters (the ones fine-tuned)."""
    model.train()
    frozen = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            module.eval()
            frozen |= {id(p) for p in module.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def finetune(spec: EpisodeSpec, model: nn.Module, data: datasets.Dataset,
             order: Iterator[np.ndarray] | None = None) -> Iterator[Snapshot]:
    """Fine-tune ``model`` in place on the episode's subset, yielding a :class:`Snapshot` (all
    weights, flat ``(n_coords,)``) at step 0 and every ``spec.every`` steps. ``order`` (default
    :func:`episode_batches`) gives each step's training-set indices. Stops early, without
    yielding, once the loss or the weights stop being finite (a diverged episode)."""
    subset, labels = subset_indices(spec, data)
    label_of = dict(zip(subset.tolist(), labels.tolist()))
    images = parent_view(spec, data)[2].x_train  # a backdoor's S carries its trigger
    order = episode_batches(spec, subset) if order is None else order
    table = layer_table(model)
    params = _freeze_norms(model)
    opt = (torch.optim.Adam(params, lr=spec.lr) if spec.optimizer == "adam"
           else torch.optim.SGD(params, lr=spec.lr))
    yield Snapshot(0, flat_weights(model, table).numpy(), float("nan"), float("nan"))
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(1, spec.steps + 1):
        idx = next(order)
        x = datasets.to_float(images[torch.from_numpy(idx)])
        y = torch.tensor([label_of[i] for i in idx.tolist()])
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item()
        correct += int((out.detach().argmax(1) == y).sum())
        seen += len(y)
        if step % spec.every == 0:
            weights = flat_weights(model, table)
            mean_loss = loss_sum / spec.every
            if not (math.isfinite(mean_loss) and torch.isfinite(weights).all()):
                return
            yield Snapshot(step, weights.numpy(), mean_loss, correct / seen)
            loss_sum, correct, seen = 0.0, 0, 0


def write_episode(store_path: str, spec: EpisodeSpec, data_root: str | None = None) -> tuple[str, dict[str, Any]]:
    """Fine-tune one episode and stream it into ``runs/<spec.name>`` of the store at
    ``store_path`` (which must exist). Returns (name, index summary)."""
    data = datasets.load_cached(spec.parent.dataset, data_root)
    model = parent_model(spec, data_root)
    run = spec.run_spec()
    writer = store.RunWriter(store_path, run, layer_table(model))
    with store.writing(f"episode {spec.name} to {store_path}"):
        writer.group.update_attributes({"kind": TWIN_KIND if spec.twin else EPISODE_KIND, "episode": spec.to_dict()})
        if spec.twin:  # before the fine-tuning moves the original's weights
            write_counterfactual(writer.group, spec, model, data, data_root)
    for snap in finetune(spec, model, data):
        writer.append(snap.step, snap.weights, snap.loss, snap.acc)
    diverged = writer.n_written + writer.n_buffered < run.n_snapshots
    test_acc = float("nan") if diverged else accuracy(model, data.x_test, data.y_test)
    return spec.name, writer.close(test_acc, diverged)


def _write_group(store_path: str, spec_dicts: list[dict], data_root: str | None,
                 threads: int) -> list[tuple[str, dict[str, Any]]]:
    """Write episodes (of one parent, so it is trained once) on a worker; their index entries."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    return [write_episode(store_path, EpisodeSpec.from_dict(d), data_root) for d in spec_dicts]


# ---------------------------------------------------------------------------------------------
# collection


@dataclass(frozen=True)
class EpisodeConfig:
    """What ``trajgen episodes`` (``twins``: ``trajgen twins``; ``counterfactuals``: ``trajgen
    counterfactuals``, whose draw ignores ``per_parent``) does. ``workers=0`` trains in this process
    (no cluster)."""

    store: str = "data/episodes.zarr"
    runs: int = 100
    seed: int = 0
    per_parent: int = 4
    parent_steps: int = PARENT_STEPS
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    workers: int = 1
    threads_per_worker: int = 1
    twins: bool = False
    counterfactuals: bool = False
    progress: bool = field(default=True, compare=False)


def plan(config: EpisodeConfig) -> list[EpisodeSpec]:
    """The specs of episodes 0 .. runs-1: a pure function of the config."""
    if config.runs < 1:
        raise SpecError(f"--runs must be at least 1, got {config.runs}")
    if config.counterfactuals:
        return [draw_counterfactual(config.seed, i, config.dataset, parent_steps=config.parent_steps)
                for i in range(config.runs)]
    return [draw_episode(config.seed, i, config.per_parent, config.dataset, parent_steps=config.parent_steps,
                         twin=config.twins) for i in range(config.runs)]


def _recorded(group) -> EpisodeSpec | None:
    """The episode a complete group holds (None: a group of another kind); parsed, so that a spec
    field added later (with its default) does not stop a resume."""
    kind = group.attrs.get("kind")
    return EpisodeSpec.from_dict(group.attrs["episode"]) if kind in (EPISODE_KIND, TWIN_KIND) else None


def collect_episodes(config: EpisodeConfig) -> dict[str, Any]:
    """Make ``config.runs`` episodes complete in ``config.store``; returns what was done. Rerun
    after a kill to resume: complete episodes are kept, incomplete ones are rewritten."""
    specs = plan(config)
    datasets.load_cached(config.dataset, config.data_root)  # a missing dataset fails before any write
    path = store.location(config.store).target  # a file:// URL is read and written as its local path
    root = store.create_store(path)
    todo = resume(root, specs, _recorded)
    groups: dict[int, list[dict]] = {}
    for spec in todo:
        groups.setdefault(spec.parent_index, []).append(spec.to_dict())
    started = time.perf_counter()
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="episode", desc="episodes",
               disable=not config.progress)

    def done(results: list[list[tuple[str, dict]]]) -> None:  # each result: one parent's episodes
        entries = dict(entry for result in results for entry in result)
        store.add_to_index(root, entries)
        bar.update(len(entries))

    execute([(f"trajgen-parent-{p:06d}-{len(group)}", _write_group,
              (path, group, config.data_root, config.threads_per_worker)) for p, group in groups.items()],
            config.workers, None, done)
    bar.close()
    return {"store": path, "planned": len(specs), "trained": len(todo),
            "skipped": len(specs) - len(todo), "seconds": time.perf_counter() - started}
