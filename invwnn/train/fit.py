"""``invwnn train``: train the past-weight predictor on a trajgen store, evaluate it on held-out
runs (:mod:`invwnn.train.heldout`) and write its checkpoint."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from trajgen.store import complete_runs, open_store, versions
from invwnn.rewind.features import check_context, normalise, normalise_target
from invwnn.rewind.predictor import CheckpointError, ModelConfig, Predictor, read_checkpoint, save_checkpoint, sha256
from invwnn.train.heldout import (eval_sample, evaluation_record, held_out_desc, horizon_bound, horizon_fit_runs,
                                  model_mae, recorded_path, resolved_store, split_runs)
from invwnn.train.windows import WindowError, WindowStream, check_windows, kind_codes

TRANSFER = 8


@dataclass(frozen=True)
class TrainConfig(ModelConfig):
    """Everything ``invwnn train`` does: the predictor's :class:`ModelConfig` and how to train it.
    Window counts are windows, times are optimizer steps."""

    store: str = "data/traj.zarr"
    out: str = "data/invwnn.pt"
    steps: int = 3000
    batch_size: int = 4096
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    val_archs: tuple[str, ...] = ()
    eval_per_kind: int = 2000  # windows per kind per held-out run (and per horizon-fit run)
    fit_runs: int = 9  # training runs whose windows fit the damped line's horizon
    eval_every: int = 250
    per_coord: int = 8  # windows cut per coordinate each time its block is read
    buffer: int = 1 << 18
    workers: int = 1
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch threads for training; more than the free cores makes OpenMP spin
    max_start: int | None = None  # latest window start (snapshots); None: anywhere in the run
    init: str | None = None  # a checkpoint of the same model config to start from (warm start)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"], d["val_archs"], d["context"] = list(self.kinds), list(self.val_archs), list(self.context)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("kinds", "val_archs", "context"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})


def data_description(store: str, runs: list[str]) -> dict[str, Any]:
    """What kind of trajectories ``runs`` are: ``data_kind`` ("runs": from-scratch training,
    "episodes": fine-tuning episodes of ``trajgen episodes``, "twins": of ``trajgen twins``, or
    "mixed") and ``snapshot_spacing``,
    the optimizer steps between snapshots (an int, or the sorted list when runs differ)."""
    groups = open_store(store)["runs"]
    kinds, spacings = set(), set()
    for name in runs:
        attrs = groups[name].attrs
        kinds.add({"episode": "episodes", "twin": "twins"}.get(attrs.get("kind"), "runs"))
        spacings.add(int(attrs["spec"]["every"]))
    spacing = sorted(spacings)
    return {"data_kind": kinds.pop() if len(kinds) == 1 else "mixed",
            "snapshot_spacing": spacing[0] if len(spacing) == 1 else spacing}


def init_weights(config: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The state dict of ``config.init`` (None without one), checked before any work: its model
    config must equal this one's, since a warm start changes the data, not the model."""
    if config.init is None:
        return None
    payload = read_checkpoint(config.init)
    theirs, ours = payload["model_config"], config.model_config()
    if theirs != ours:
        a, b = theirs.to_dict(), ours.to_dict()
        diff = ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in sorted(b) if a.get(k) != b.get(k))
        raise CheckpointError(f"--init {config.init}: its model differs from this one's ({diff})")
    return payload["state_dict"]


def window_loss(model: Predictor, batch: dict[str, torch.Tensor], device: str) -> torch.Tensor:
    """The training loss on a :class:`WindowStream` batch: mean absolute error of the predicted
    normalised residual (L1, as the paper)."""
    x, offset, scale = normalise(batch["w"].to(device), model.config.eps)
    y = normalise_target(batch["target"].to(device), offset, scale, model.config.clip)
    return (model(x, model.kind_index(batch["kind"].to(device)), batch["context"].to(device)) - y).abs().mean()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on held-out runs, write the checkpoint; return its evaluation/provenance."""
    with torch_threads(config.threads):
        return _train(config, progress)


def _train(config: TrainConfig, progress: bool) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    kind_codes(config.kinds)
    init = init_weights(config)
    runs = complete_runs(config.store)
    check_windows(config.store, runs, config.k, config.u, config.target)
    train_runs, val_runs = split_runs(config.store, runs, config.val_fraction, config.val_archs, config.seed)
    check_context(config.context)
    sample = dict(kinds=config.kinds, per_kind=config.eval_per_kind, seed=config.seed, target=config.target,
                  max_start=config.max_start, context=config.context)
    val = eval_sample(config.store, val_runs, config.k, config.u, **sample)
    fit_runs = horizon_fit_runs(config.store, train_runs, config.fit_runs, config.seed)
    # workers hand over TRANSFER batches at once: per-item IPC costs as much as cutting 4k windows
    stream = WindowStream(config.store, train_runs, config.k, config.u, config.batch_size * TRANSFER,
                          config.kinds, config.per_coord, config.buffer, config.seed,
                          target=config.target, max_start=config.max_start, context=config.context)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                         persistent_workers=False, prefetch_factor=4 if config.workers else None)
    model = Predictor(config.model_config())
    if init is not None:
        model.load_state_dict(init)
    model = model.to(config.device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    curve, seen, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=config.steps, desc="invwnn train", unit="step", disable=not progress)
    batches = (dict(zip(item, parts)) for item in loader
                for parts in zip(*(v.split(config.batch_size) for v in item.values())))
    for step, batch in enumerate(batches):
        if step == config.steps:
            break
        loss = window_loss(model, batch, config.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(batch["target"])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            curve.append({"step": step + 1, "windows": seen, "seconds": time.perf_counter() - t0,
                          "val_mae": model_mae(model, val)})
            model.train()
    bar.close()
    seconds = time.perf_counter() - t0
    if seen == 0:
        raise WindowError(f"{config.store}: the training runs yielded no windows of the kinds {', '.join(config.kinds)}")
    fit = eval_sample(config.store, fit_runs, config.k, config.u, **sample)
    desc = held_out_desc(len(val_runs), config.val_archs)
    evaluation = {**evaluation_record(model, val, fit, horizon_bound(config.u, config.target), val_runs, fit_runs,
                                      desc, config.store), "curve": curve}
    final = curve[-1]["val_mae"]
    # the first validation point within 1% of the final error: when training had effectively converged
    reached = next(c for c in curve if c["val_mae"] <= final * 1.01)
    provenance = {"store": resolved_store(config.store), **data_description(config.store, train_runs),
                  "runs": len(runs), "train_runs": len(train_runs),
                  **({"init": {"path": recorded_path(Path(config.init)), "sha256": sha256(config.init)}}
                     if config.init else {}),
                  "val_runs": val_runs, "windows_seen": seen, "train_seconds": round(seconds, 1),
                  "seconds_to_final_val": round(reached["seconds"], 1), "versions": {**versions(), "invwnn": version("invwnn")}}
    save_checkpoint(config.out, model, config.to_dict(), evaluation, provenance)
    return {"evaluation": evaluation, "provenance": provenance, "out": config.out}
