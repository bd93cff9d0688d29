"""Train the predictor on a trajgen store and evaluate it on held-out runs.

Held-out data is always whole runs (a random, architecture-balanced share, or every run of the
``val_archs``); evaluation uses a fixed seeded sample of their windows, stratified by kind so that
rare kinds (biases, norms) get as many windows as the plentiful ones.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from importlib.metadata import version
from trajgen.nets import KINDS
from trajgen.store import complete_runs, index, open_store, versions
from invwnn.predictor import ModelConfig, Predictor, predict_past, save_checkpoint
from invwnn.windows import (LINEAR_FITS, WindowError, WindowStream, check_windows, kind_codes,
                            linear_backextrapolation, no_rewind, normalise, normalise_target)


TRANSFER = 8


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``invwnn train`` does. Window counts are windows, times are optimizer steps."""

    store: str = "data/traj.zarr"
    out: str = "data/invwnn.pt"
    k: int = 15
    u: int = 3
    kinds: tuple[str, ...] = KINDS
    width: int = 64
    kind_dim: int = 8
    clip: float = 8.0
    steps: int = 3000
    batch_size: int = 4096
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    val_archs: tuple[str, ...] = ()
    eval_per_kind: int = 2000  # windows per kind per held-out run
    eval_every: int = 250
    per_coord: int = 8  # windows cut per coordinate each time its block is read
    buffer: int = 1 << 18
    workers: int = 1
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch threads for training; more than the free cores makes OpenMP spin

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"], d["val_archs"] = list(self.kinds), list(self.val_archs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("kinds", "val_archs"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def model_config(self) -> ModelConfig:
        return ModelConfig(k=self.k, u=self.u, kinds=self.kinds, width=self.width,
                           kind_dim=self.kind_dim, clip=self.clip)


def split_runs(store: str, runs: list[str], val_fraction: float, val_archs: tuple[str, ...],
               seed: int) -> tuple[list[str], list[str]]:
    """(training runs, held-out runs), disjoint. With ``val_archs`` every run of those
    architectures is held out; otherwise ``ceil(val_fraction * n)`` runs, taken in turn from each
    architecture's seeded shuffle so each architecture is represented."""
    arch = {name: s["arch"] for name, s in index(open_store(store)).items()}
    if val_archs:
        val = [r for r in runs if arch[r] in val_archs]
        if not val:
            raise WindowError(f"{store} has no complete runs of architecture {', '.join(val_archs)}")
    else:
        rng = np.random.default_rng(seed)
        groups = [list(rng.permutation([r for r in runs if arch[r] == a])) for a in sorted(set(arch[r] for r in runs))]
        order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        val = order[:max(1, math.ceil(val_fraction * len(runs)))]
    train = [r for r in runs if r not in set(val)]
    if not train:
        raise WindowError(f"holding out {len(val)} of {len(runs)} runs leaves none to train on")
    return sorted(train), sorted(val)


def eval_sample(store: str, runs: list[str], k: int, u: int, kinds: tuple[str, ...],
                per_kind: int, seed: int) -> dict[str, torch.Tensor]:
    """A fixed sample of windows from ``runs``: up to ``per_kind`` coordinates of each kind per run,
    one window each at a random start. Returns ``w`` (n, K), ``target`` (n,), ``kind`` (n,) codes."""
    root = open_store(store)
    keep = kind_codes(kinds)
    out = defaultdict(list)
    for i, name in enumerate(runs):
        rng = np.random.default_rng([seed, i])
        g = root["runs"][name]
        codes = g["kind"][:]
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(codes == c))[:per_kind] for c in keep]))
        h = g["history"]
        step = h.chunks[0]
        for c0 in range(0, h.shape[0], step):  # chunk-aligned slabs, keep only the sampled rows
            sel = rows[(rows >= c0) & (rows < c0 + step)]
            if not len(sel):
                continue
            slab = h[c0:min(c0 + step, h.shape[0]), :][sel - c0]
            ok = np.isfinite(slab).all(1)
            slab, sel = slab[ok], sel[ok]
            starts = rng.integers(u, slab.shape[1] - k + 1, size=len(sel))
            out["w"].append(slab[np.arange(len(sel))[:, None], starts[:, None] + np.arange(k)])
            out["target"].append(slab[np.arange(len(sel)), starts - u])
            out["kind"].append(codes[sel].astype(np.int64))
    return {key: torch.from_numpy(np.concatenate(v)) for key, v in out.items()}


@torch.no_grad()
def evaluate(model: Predictor, sample: dict[str, torch.Tensor], u: int) -> dict[str, Any]:
    """Per kind: mean absolute error of the past weight (weight units) for the model, "no rewind"
    and each linear fit; the best linear fit is chosen per kind on this same sample (an optimistic
    baseline, labelled so). ``all`` pools every sampled window."""
    w, target, kind = sample["w"], sample["target"], sample["kind"]
    pred = predict_past(model, w, kind)
    fits = {str(fit or w.shape[1]): linear_backextrapolation(w, u, fit)
            for fit in LINEAR_FITS if fit <= w.shape[1]}  # a short window (K < 5) has fewer fits
    res: dict[str, Any] = {}
    groups = [(KINDS[c], kind == c) for c in sorted(set(kind.tolist()))] + [("all", torch.ones_like(kind, dtype=torch.bool))]
    for name, m in groups:
        err = lambda p: float((p[m] - target[m]).abs().mean())  # noqa: E731
        lin = {fit: err(p) for fit, p in fits.items()}
        best = min(lin, key=lin.get)
        model_mae, base0 = err(pred), err(no_rewind(w))
        res[name] = {"n": int(m.sum()), "model": model_mae, "no_rewind": base0, "linear": lin[best],
                     "linear_fit": int(best), "linear_all_fits": lin,
                     "ratio_no_rewind": model_mae / base0 if base0 else float("nan"),
                     "ratio_linear": model_mae / lin[best] if lin[best] else float("nan")}
    return res


def format_evaluation(ev: dict[str, Any]) -> str:
    """The evaluation as a table (one line per kind)."""
    lines = []
    for split, table in ev.items():
        if not isinstance(table, dict) or "all" not in table:
            continue
        runs = ev.get(f"{split}_runs_desc", "")
        lines.append(f"{split}: held-out MAE of the past weight (weight units){runs}")
        lines.append(f"  {'kind':<10} {'windows':>8} {'model':>10} {'no rewind':>10} {'linear':>10} "
                     f"{'fit m':>5} {'vs none':>8} {'vs lin':>7}")
        for kind, r in table.items():
            lines.append(f"  {kind:<10} {r['n']:>8} {r['model']:>10.3e} {r['no_rewind']:>10.3e} "
                         f"{r['linear']:>10.3e} {r['linear_fit']:>5} {r['ratio_no_rewind']:>8.3f} "
                         f"{r['ratio_linear']:>7.3f}")
    return "\n".join(lines)


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on held-out runs, write the checkpoint; return its evaluation/provenance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, progress: bool) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    kind_codes(config.kinds)
    runs = complete_runs(config.store)
    check_windows(config.store, runs, config.k, config.u)
    train_runs, val_runs = split_runs(config.store, runs, config.val_fraction, config.val_archs, config.seed)
    val = eval_sample(config.store, val_runs, config.k, config.u, config.kinds, config.eval_per_kind, config.seed)
    # workers hand over TRANSFER batches at once: per-item IPC costs as much as cutting 4k windows
    stream = WindowStream(config.store, train_runs, config.k, config.u, config.batch_size * TRANSFER,
                          config.kinds, config.per_coord, config.buffer, config.seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                         persistent_workers=False, prefetch_factor=4 if config.workers else None)
    model = Predictor(config.model_config()).to(config.device)
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
        w, target = batch["w"].to(config.device), batch["target"].to(config.device)
        x, offset, scale = normalise(w, config.model_config().eps)
        y = normalise_target(target, offset, scale, config.clip)
        loss = (model(x, model.kind_index(batch["kind"].to(config.device))) - y).abs().mean()  # L1, as the paper
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(target)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            mae = evaluate(model, val, config.u)["all"]["model"]
            curve.append({"step": step + 1, "windows": seen, "seconds": time.perf_counter() - t0, "val_mae": mae})
            model.train()
    bar.close()
    seconds = time.perf_counter() - t0
    if seen == 0:
        raise WindowError(f"{config.store}: the training runs yielded no windows of the kinds {', '.join(config.kinds)}")
    evaluation = {"held_out": evaluate(model, val, config.u),
                  "held_out_runs_desc": f" - {len(val_runs)} runs" + (f" of {', '.join(config.val_archs)}" if config.val_archs else ""),
                  "curve": curve}
    final = curve[-1]["val_mae"]
    # the first validation point within 1% of the final error: when training had effectively converged
    reached = next(c for c in curve if c["val_mae"] <= final * 1.01)
    provenance = {"store": str(Path(config.store).resolve()), "runs": len(runs), "train_runs": len(train_runs),
                  "val_runs": val_runs, "windows_seen": seen, "train_seconds": round(seconds, 1),
                  "seconds_to_final_val": round(reached["seconds"], 1), "versions": {**versions(), "invwnn": version("invwnn")}}
    save_checkpoint(config.out, model, config.to_dict(), evaluation, provenance)
    return {"evaluation": evaluation, "provenance": provenance, "out": config.out}
