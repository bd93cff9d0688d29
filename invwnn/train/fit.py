"""Train the predictor on a trajgen store and evaluate it on held-out runs.

Held-out data is always whole runs (a random, architecture-balanced share, or every run of the
``val_archs``; fine-tuning episodes are held out with every other episode of their parent); evaluation uses a fixed seeded sample of their windows, stratified by kind so that
rare kinds (biases, norms) get as many windows as the plentiful ones.

The model is compared with two analytic baselines: "no rewind" (the window's first value) and the
"damped line" (the least-squares line through the window continued h snapshot intervals back),
whose horizon h is fitted on a sample of *training* windows. Which of the two is the headline's
baseline is also decided on that training sample: nothing about the comparison is chosen by
looking at held-out data.
"""
from __future__ import annotations

import hashlib
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
from trajgen.store import complete_runs, index, location, open_store, run_array, versions
from invwnn.rewind.predictor import (EVALUATION_FORMAT, CheckpointError, ModelConfig, Predictor, predict_past, read_checkpoint,
                              save_checkpoint)
from invwnn.train.windows import (WindowError, WindowStream, check_context, check_windows, context_columns,
                            fit_horizon, kind_codes, layer_context, linear_backextrapolation, no_rewind,
                            normalise, normalise_target, run_step_context, start_range)


TRANSFER = 8
BASELINES = ("no_rewind", "damped_line")


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
    eval_per_kind: int = 2000  # windows per kind per held-out run (and per horizon-fit run)
    fit_runs: int = 9  # training runs whose windows fit the damped line's horizon
    eval_every: int = 250
    per_coord: int = 8  # windows cut per coordinate each time its block is read
    buffer: int = 1 << 18
    workers: int = 1
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch threads for training; more than the free cores makes OpenMP spin
    target: str = "past"  # or "counterfactual": a twin store's counterfactual weights (invwnn.train.windows)
    max_start: int | None = None  # latest window start (snapshots); None: anywhere in the run
    context: tuple[str, ...] = ()  # extra inputs (invwnn.train.windows.CONTEXTS), recorded in the checkpoint
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
        return ModelConfig(k=self.k, u=self.u, kinds=self.kinds, width=self.width,
                           kind_dim=self.kind_dim, clip=self.clip, target=self.target, context=self.context)


def balanced_order(runs: list[str], arch: dict[str, str], rng: np.random.Generator) -> list[str]:
    """``runs`` shuffled within each architecture, then taken in turn from each architecture
    (sorted by name), so any prefix of the result is balanced across architectures."""
    groups = [list(rng.permutation([r for r in runs if arch[r] == a])) for a in sorted({arch[r] for r in runs})]
    return [str(g[i]) for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def run_archs(store: str) -> dict[str, str]:
    """Run name -> architecture family, from the store's index."""
    return {name: s["arch"] for name, s in index(open_store(store)).items()}


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


def held_out_units(store: str, runs: list[str]) -> dict[str, str]:
    """Run -> the unit held out as a whole: an episode's parent (its episodes share the parent's
    weights, so they are held out together), any other run itself."""
    groups = open_store(store)["runs"]
    out = {}
    for name in runs:
        episode = groups[name].attrs.get("episode") if groups[name].attrs.get("kind") in ("episode", "twin") else None
        out[name] = f"parent-{episode['parent_index']:06d}" if episode else name
    return out


def split_runs(store: str, runs: list[str], val_fraction: float, val_archs: tuple[str, ...],
               seed: int) -> tuple[list[str], list[str]]:
    """(training runs, held-out runs), disjoint. With ``val_archs`` every run of those
    architectures is held out; otherwise every run of the first ``ceil(val_fraction * n)`` of the
    n :func:`held_out_units` in :func:`balanced_order` (seed ``seed``), so each architecture is
    represented (for a store of training runs the units are the runs)."""
    arch = run_archs(store)
    if val_archs:
        val = [r for r in runs if arch[r] in val_archs]
        if not val:
            raise WindowError(f"{store} has no complete runs of architecture {', '.join(val_archs)}")
    else:
        unit = held_out_units(store, runs)
        units = list(dict.fromkeys(unit[r] for r in runs))
        unit_arch = {unit[r]: arch[r] for r in runs}
        chosen = set(balanced_order(units, unit_arch, np.random.default_rng(seed))[:max(1, math.ceil(val_fraction * len(units)))])
        val = [r for r in runs if unit[r] in chosen]
    train = [r for r in runs if r not in set(val)]
    if not train:
        raise WindowError(f"holding out {len(val)} of {len(runs)} runs leaves none to train on")
    return sorted(train), sorted(val)


def held_out_desc(n_runs: int, val_archs: tuple[str, ...]) -> str:
    """How the held-out runs were chosen, as the evaluation table's title says it."""
    return f" - {n_runs} runs" + (f" of {', '.join(val_archs)}" if val_archs else "")


def horizon_fit_runs(store: str, train_runs: list[str], n: int, seed: int) -> list[str]:
    """The ``n`` training runs whose windows fit the damped line's horizon: the first ``n`` of
    :func:`balanced_order` of ``train_runs`` (seed ``[seed, 1]``), sorted. A pure function of the
    run names and their architectures, so a store holding only these runs (and the held-out ones)
    gives the same choice as the whole collection when they are the first ``n``."""
    return sorted(balanced_order(train_runs, run_archs(store), np.random.default_rng([seed, 1]))[:n])


def eval_sample(store: str, runs: list[str], k: int, u: int, kinds: tuple[str, ...],
                per_kind: int, seed: int, target: str = "past", max_start: int | None = None,
                context: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A fixed sample of windows from ``runs``: up to ``per_kind`` coordinates of each kind per run,
    one window each at a random start (``target`` and ``max_start`` as
    :func:`invwnn.train.windows.cut_windows`; with a "layer" context, one start per layer of a slab and
    the layer's statistics over every coordinate of it in the slab). Returns ``w`` (n, K),
    ``target`` (n,), ``kind`` (n,) codes, ``context`` (n, C)."""
    root = open_store(store)
    keep = kind_codes(kinds)
    out = defaultdict(list)
    for i, name in enumerate(runs):
        rng = np.random.default_rng([seed, i])
        step_ctx = run_step_context(root, name) if "step" in context else None
        codes = run_array(root, name, "kind")[:]
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(codes == c))[:per_kind] for c in keep]))
        h = run_array(root, name, "history")  # a damaged chunk: trajgen's one-line StoreError
        cf = run_array(root, name, "counterfactual") if target == "counterfactual" else None
        step = h.chunks[0]
        for c0 in range(0, h.shape[0], step):  # chunk-aligned slabs, keep only the sampled rows
            sel = rows[(rows >= c0) & (rows < c0 + step)]
            if not len(sel):
                continue
            full = h[c0:min(c0 + step, h.shape[0]), :]
            slab = full[sel - c0]
            ok = np.isfinite(slab).all(1)
            if cf is not None:
                goal = cf[c0:min(c0 + step, h.shape[0])][sel - c0]
                ok &= np.isfinite(goal)
                goal = goal[ok]
            slab, sel = slab[ok], sel[ok]
            lo, hi = start_range(slab.shape[1], k, u, cf is not None, max_start)
            layer_ctx = None
            if "layer" in context:
                starts, layer_ctx = _layer_sample(full, run_array(root, name, "layer")[c0:c0 + len(full)],
                                                  sel - c0, k, lo, hi, rng)
            else:
                starts = rng.integers(lo, hi + 1, size=len(sel))
            out["w"].append(slab[np.arange(len(sel))[:, None], starts[:, None] + np.arange(k)])
            out["target"].append(goal if cf is not None else slab[np.arange(len(sel)), starts - u])
            out["kind"].append(codes[sel].astype(np.int64))
            out["context"].append(context_columns(context, len(sel), step_ctx, layer_ctx))
    return {key: torch.from_numpy(np.concatenate(v)) for key, v in out.items()}


def _layer_sample(full: np.ndarray, layers: np.ndarray, sel: np.ndarray, k: int, lo: int, hi: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Starts (len(sel),) and "layer" context (len(sel), 2) of the sampled rows ``sel`` of a slab
    ``full`` (n, T): one start per layer, statistics over the layer's finite rows of the slab."""
    starts, ctx = np.empty(len(sel), np.int64), np.empty((len(sel), 2), np.float32)
    finite = np.isfinite(full).all(1)
    for lid in np.unique(layers[sel]):
        mine = layers[sel] == lid
        start = int(rng.integers(lo, hi + 1))
        members = np.flatnonzero((layers == lid) & finite)
        stats = layer_context(torch.from_numpy(full[members, start:start + k]), torch.zeros(len(members)))
        starts[mine] = start
        ctx[mine] = stats.numpy()[np.searchsorted(members, sel[mine])]
    return starts, ctx


def _recorded_path(path: Path) -> str:
    """A local path as provenance records it: relative to the working directory when inside it (so a
    checkpoint trained in a checkout and shipped carries no machine path), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _resolved(store: str) -> str:
    """The store as provenance records it: its local path (a file:// URL's too, see
    :func:`_recorded_path`), or the URL."""
    where = location(store)
    return _recorded_path(where.path) if where.path is not None else where.target


def horizon_bound(u: int, target: str) -> float:
    """Largest damped-line horizon fitted: U for past targets; for counterfactual ones, which need
    not lie U snapshots back, 10 U."""
    return float(u if target == "past" else 10 * u)


def fit_horizons(fit: dict[str, torch.Tensor], u: float) -> dict[str, float]:
    """Damped-line horizons (snapshot intervals, in ``[0, u]``) fitted on the training sample
    ``fit`` (as :func:`eval_sample` returns): one per kind present in it, and ``"all"`` pooled over
    every window (the single horizon ``invwnn apply --rewinder linear --horizon`` would take)."""
    w, target, kind = fit["w"], fit["target"], fit["kind"]
    out = {KINDS[c]: fit_horizon(w[kind == c], target[kind == c], u) for c in sorted(set(kind.tolist()))}
    out["all"] = fit_horizon(w, target, u)
    return out


def damped_line(w: torch.Tensor, kind: torch.Tensor, horizons: dict[str, float]) -> torch.Tensor:
    """The damped line of each window (n, K) with its kind's horizon (the pooled ``"all"`` horizon
    for a kind the training sample lacked): (n,) weight units."""
    h = torch.tensor([horizons.get(name, horizons["all"]) for name in KINDS]).to(w)[kind]
    first = linear_backextrapolation(w, 0.0, 0)  # the line at the first snapshot
    return first - h * (first - linear_backextrapolation(w, 1.0, 0))  # minus h slopes


def _baseline_errors(sample: dict[str, torch.Tensor], horizons: dict[str, float]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(kind codes (n,), absolute error (n,) of each baseline on ``sample``, weight units)."""
    w, target, kind = sample["w"], sample["target"], sample["kind"]
    return kind, {"no_rewind": (no_rewind(w) - target).abs(),
                  "damped_line": (damped_line(w, kind, horizons) - target).abs()}


def _groups(kind: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [(KINDS[c], kind == c) for c in sorted(set(kind.tolist()))] + [("all", torch.ones_like(kind, dtype=torch.bool))]


@torch.no_grad()
def model_mae(model: Predictor, sample: dict[str, torch.Tensor]) -> float:
    """Mean absolute error (weight units) of the model's past weight over every window of ``sample``."""
    return float((predict_past(model, sample["w"], sample["kind"], sample["context"]) - sample["target"]).abs().mean())


@torch.no_grad()
def evaluate(model: Predictor, val: dict[str, torch.Tensor], fit: dict[str, torch.Tensor],
             horizons: dict[str, float]) -> dict[str, Any]:
    """Held-out comparison of the model with the two baselines, per kind and pooled (``all``).

    ``val``: held-out windows, ``fit``: training windows (both as :func:`eval_sample` returns);
    ``horizons``: the damped line's, :func:`fit_horizons` of ``fit`` (``all`` rewinds each window
    with its kind's). The baseline of each row is the one with the smaller error on ``fit``, so
    nothing is chosen on held-out data. Each row: ``n`` held-out windows; ``model``,
    ``no_rewind``, ``damped_line``: held-out MAE (weight units); ``horizon`` (snapshot intervals;
    None in ``all``); ``train_no_rewind``, ``train_damped_line``: MAE on ``fit``; ``baseline``: the
    chosen one; ``ratio_no_rewind``, ``ratio_damped_line`` and the headline ``ratio`` = model /
    chosen baseline (below 1: the model wins).
    """
    pred_err = (predict_past(model, val["w"], val["kind"], val["context"]) - val["target"]).abs()
    kind, err = _baseline_errors(val, horizons)
    fit_kind, fit_err = _baseline_errors(fit, horizons)
    res: dict[str, Any] = {}
    for name, m in _groups(kind):
        fm = fit_kind == KINDS.index(name) if name != "all" else torch.ones_like(fit_kind, dtype=torch.bool)
        if not fm.any():  # a kind no training run has (e.g. a held-out architecture's): pooled choice
            fm = torch.ones_like(fit_kind, dtype=torch.bool)
        row = {"n": int(m.sum()), "model": float(pred_err[m].mean())}
        row |= {b: float(err[b][m].mean()) for b in BASELINES}
        row["horizon"] = None if name == "all" else horizons.get(name, horizons["all"])
        row |= {f"train_{b}": float(fit_err[b][fm].mean()) for b in BASELINES}
        row["baseline"] = min(BASELINES, key=lambda b: row[f"train_{b}"])
        row |= {f"ratio_{b}": row["model"] / row[b] if row[b] else float("nan") for b in BASELINES}
        row["ratio"] = row[f"ratio_{row['baseline']}"]
        res[name] = row
    return res


def evaluation_record(model: Predictor, val: dict[str, torch.Tensor], fit: dict[str, torch.Tensor],
                      u: float, val_runs: list[str], fit_runs: list[str], desc: str, store: str) -> dict[str, Any]:
    """The checkpoint's evaluation record (format :data:`EVALUATION_FORMAT`), without the curve:
    the :func:`evaluate` table of ``val`` (held out, from ``val_runs``) against ``fit`` (training
    windows, from ``fit_runs``) and how the damped line's horizons were fitted."""
    horizons = fit_horizons(fit, u)
    return {"format": EVALUATION_FORMAT, "held_out": evaluate(model, val, fit, horizons), "held_out_runs_desc": desc,
            "held_out_runs": val_runs, "store": _resolved(store),
            "horizon_fit": {"runs": fit_runs, "windows": len(fit["target"]), "horizons": horizons,
                            "method": "exact minimiser of the training-sample MAE: the |slope|-weighted median "
                                      f"of each window's own best horizon, clamped to [0, {u:g}]"}}


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


def _init_provenance(init: str | None) -> dict[str, Any]:
    if init is None:
        return {}
    return {"init": {"path": _recorded_path(Path(init)), "sha256": hashlib.sha256(Path(init).read_bytes()).hexdigest()}}


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
        w, target = batch["w"].to(config.device), batch["target"].to(config.device)
        x, offset, scale = normalise(w, config.model_config().eps)
        y = normalise_target(target, offset, scale, config.clip)
        context = batch["context"].to(config.device)
        loss = (model(x, model.kind_index(batch["kind"].to(config.device)), context) - y).abs().mean()  # L1, as the paper
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(target)
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
    provenance = {"store": _resolved(config.store), **data_description(config.store, train_runs),
                  "runs": len(runs), "train_runs": len(train_runs), **_init_provenance(config.init),
                  "val_runs": val_runs, "windows_seen": seen, "train_seconds": round(seconds, 1),
                  "seconds_to_final_val": round(reached["seconds"], 1), "versions": {**versions(), "invwnn": version("invwnn")}}
    save_checkpoint(config.out, model, config.to_dict(), evaluation, provenance)
    return {"evaluation": evaluation, "provenance": provenance, "out": config.out}
