"""Counterfactual twins: the exact answer to "unlearn S", coordinate by coordinate.

A *twin episode* (``trajgen twins``) is an episode (:mod:`trajgen.episodes`: a trained parent
fine-tuned on a subset S, a snapshot every step) whose run group also holds the final weights of the
parent's *twin*: the parent's training repeated from the same initial weights with the same sequence
of minibatches, each with the examples of S removed. The twin is the model trained without S, so
the original's fine-tuning window on S (the episode's ``history``) can be paired with where
unlearning S should take each coordinate (``counterfactual``). A batch that S empties entirely is
dropped (rare: S is a few percent of the pool); the twin then still takes the parent's number of
steps, the last of them one batch further along the same order.

What a ``twin-<index>`` run group holds beyond an episode's (schema 2):

==========================  =====================  ================================================
``counterfactual``          (n_coords,) float32    the twin's final weights, history's coordinate order
``parent_buffers``          (n_buffers,) float32   the original's float buffers (norm statistics),
                                                   ``named_buffers`` order; only where it has some
``counterfactual_buffers``  (n_buffers,) float32   the twin's
``attrs["kind"]``           ``"twin"``
``attrs["twin"]``           dict                   ``original`` / ``twin``: ``test_acc``,
                                                   ``forget_acc`` (on S, with the labels the parent
                                                   learned), ``retain_acc`` (the pool without S),
                                                   ``distance``: L2 norm of twin - original,
                                                   ``relative_distance``: that over the original's
                                                   norm, ``dropped_batches``: batches S emptied
==========================  =====================  ================================================

``trajgen counterfactuals`` writes twins too (:func:`trajgen.episode_spec.draw_counterfactual`):
one parent per triple, trained to a near-memorised pool, S by each of the bench's six rules,
four families; the same layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import torch
import zarr
from torch import nn

from trajgen import data as datasets
from trajgen import store
from trajgen.episode_spec import EpisodeSpec, episode_parent_data, parent_view, subset_indices
from trajgen.nets import flat_buffers, flat_weights, layer_table
from trajgen.train import accuracy, batches, build_model, snapshots

COUNTERFACTUAL = "counterfactual"
PARENT_BUFFERS, COUNTERFACTUAL_BUFFERS = "parent_buffers", "counterfactual_buffers"




def twin_order(spec: EpisodeSpec, data: datasets.Dataset, dropped: list[torch.Tensor] | None = None,
               seed: int | None = None) -> Iterator[torch.Tensor]:
    """The twin's minibatches as positions in the parent's pool: the parent's own order
    (:func:`trajgen.train.batches` seeded by the parent, or by ``seed``) with the positions of S
    removed from each batch. Batches left empty are not yielded (appended to ``dropped`` if
    given). Endless."""
    pool = episode_parent_data(spec, data)[0]
    subset, _ = subset_indices(spec, data)
    in_s = torch.from_numpy(np.isin(pool, subset))
    for idx in batches(len(pool), spec.parent.batch_size, spec.parent.seed if seed is None else seed):
        kept = idx[~in_s[idx]]
        if len(kept):
            yield kept
        elif dropped is not None:
            dropped.append(idx)


def training_indices(spec: EpisodeSpec, data: datasets.Dataset, positions: torch.Tensor) -> np.ndarray:
    """Pool positions (as :func:`twin_order` yields) -> indices into the training set."""
    return episode_parent_data(spec, data)[0][positions.numpy()]


def twin_model(spec: EpisodeSpec, data_root: str | None = None, seed: int | None = None) -> tuple[nn.Module, int]:
    """The parent's twin, trained without S: (model, batches S emptied and the twin dropped). With
    ``seed``, a *stranger* instead: the same recipe and data without S, but initial weights and
    batch order drawn from ``seed`` (the yardstick for how close twins are)."""
    data = datasets.load_cached(spec.parent.dataset, data_root)
    pool, _, view = parent_view(spec, data)
    pool_data = dataclasses.replace(view, x_train=view.x_train[pool], y_train=view.y_train[pool])
    run = spec.parent if seed is None else dataclasses.replace(spec.parent, seed=seed)
    model = build_model(run, pool_data)  # seeded by the run: the twin starts where the parent did
    dropped: list[torch.Tensor] = []
    for _ in snapshots(run, model, pool_data, twin_order(spec, data, dropped, seed)):
        pass
    return model, len(dropped)


def write_counterfactual(group: zarr.Group, spec: EpisodeSpec, original: nn.Module, data: datasets.Dataset,
                         data_root: str | None = None) -> dict[str, Any]:
    """Train ``spec``'s twin and write its final weights as ``counterfactual`` into the (incomplete)
    run ``group``, with the pair's accuracies and distance in ``attrs["twin"]``. ``original`` is
    the trained parent, before its fine-tuning on S. Returns that attribute."""
    twin, dropped = twin_model(spec, data_root)
    table = layer_table(original)
    w_original, w_twin = flat_weights(original, table), flat_weights(twin, table)
    subset, labels = subset_indices(spec, data)
    pool, _, view = parent_view(spec, data)
    rest = torch.from_numpy(np.setdiff1d(pool, subset))

    def accuracies(model: nn.Module) -> dict[str, float]:
        return {"test_acc": accuracy(model, data.x_test, data.y_test),
                "forget_acc": accuracy(model, view.x_train[torch.from_numpy(subset)], labels),
                "retain_acc": accuracy(model, view.x_train[rest], view.y_train[rest])}

    distance = float((w_twin - w_original).norm())
    record = {"original": accuracies(original), "twin": accuracies(twin), "distance": distance,
              "relative_distance": distance / max(float(w_original.norm()), 1e-12), "dropped_batches": dropped}
    n = w_twin.numel()
    group.create_array(COUNTERFACTUAL, data=w_twin.numpy(), chunks=(min(store.COORD_CHUNK, n),),
                       **store.history_codecs())
    if flat_buffers(original).numel():  # norm statistics: the weights alone do not make the function
        for key, model in ((PARENT_BUFFERS, original), (COUNTERFACTUAL_BUFFERS, twin)):
            group.create_array(key, data=flat_buffers(model).numpy(), **store.small_codecs())
    group.attrs["twin"] = record
    return record


def read_counterfactual(root: zarr.Group, name: str) -> store.RunArray:
    """The ``counterfactual`` array of twin run ``name`` (a damaged chunk raises StoreError)."""
    return store.run_array(root, name, COUNTERFACTUAL)
