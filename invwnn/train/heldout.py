"""The held-out side of ``invwnn train``: which runs are held out and which fit the baselines, the
fixed window samples drawn from them, and the comparison of a predictor with the two baselines.

Held-out data is whole runs (an architecture-balanced share, or every run of the ``val_archs``;
episodes are held out with their parent's other episodes), sampled by kind so rare kinds get as
many windows as plentiful ones. The baselines: "no rewind" (the window's first value) and the
"damped line" (the window's least-squares line continued h snapshots back). h, and which baseline
is the headline's, are fitted on *training* windows: nothing is chosen on held-out data.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajgen.nets import KINDS
from trajgen.store import index, location, open_store, run_array
from invwnn.rewind.features import context_columns, layer_context
from invwnn.rewind.predictor import EVALUATION_FORMAT, Predictor, predict_past
from invwnn.rewind.rewinders import LinearRewinder, ResetRewinder
from invwnn.train.windows import WindowError, fit_horizon, kind_codes, run_step_context, start_range

BASELINES = ("no_rewind", "damped_line")


def balanced_order(runs: list[str], arch: dict[str, str], rng: np.random.Generator) -> list[str]:
    """``runs`` shuffled within each architecture, then taken in turn from each architecture
    (sorted by name), so any prefix of the result is balanced across architectures."""
    groups = [list(rng.permutation([r for r in runs if arch[r] == a])) for a in sorted({arch[r] for r in runs})]
    return [str(g[i]) for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def run_archs(store: str) -> dict[str, str]:
    """Run name -> architecture family, from the store's index."""
    return {name: s["arch"] for name, s in index(open_store(store)).items()}


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
    :func:`balanced_order` of ``train_runs`` (seed ``[seed, 1]``), sorted (a pure function of the
    run names and architectures, so a store of only these runs reproduces it)."""
    return sorted(balanced_order(train_runs, run_archs(store), np.random.default_rng([seed, 1]))[:n])


def eval_sample(store: str, runs: list[str], k: int, u: int, kinds: tuple[str, ...],
                per_kind: int, seed: int, target: str = "past", max_start: int | None = None,
                context: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A fixed sample of windows from ``runs``: up to ``per_kind`` coordinates of each kind per run,
    one window each at a random start (as :func:`invwnn.train.windows.cut_windows`; with a "layer"
    context, one start per layer of a slab, its statistics over the whole layer in the slab).
    Returns ``w`` (n, K), ``target`` (n,), ``kind`` (n,) codes, ``context`` (n, C)."""
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


def recorded_path(path: Path) -> str:
    """A local path as provenance records it: relative to the working directory when inside it (so a
    checkpoint trained in a checkout and shipped carries no machine path), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolved_store(store: str) -> str:
    """The store as provenance records it: its local path (:func:`recorded_path`), or the URL."""
    where = location(store)
    return recorded_path(where.path) if where.path is not None else where.target


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
    first = LinearRewinder(0.0).rewind(w)  # the line at the first snapshot
    return first - h * (first - LinearRewinder(1.0).rewind(w))  # minus h slopes


def _baseline_errors(sample: dict[str, torch.Tensor], horizons: dict[str, float]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(kind codes (n,), absolute error (n,) of each baseline on ``sample``, weight units)."""
    w, target, kind = sample["w"], sample["target"], sample["kind"]
    return kind, {"no_rewind": (ResetRewinder().rewind(w) - target).abs(),
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
    """Held-out comparison of the model with the two baselines, per kind and pooled (``all``):
    ``val`` held-out and ``fit`` training windows (:func:`eval_sample`), ``horizons`` the damped
    line's (:func:`fit_horizons` of ``fit``). Each row: ``n`` windows; ``model``, ``no_rewind``,
    ``damped_line``: held-out MAE (weight units); ``horizon`` (None in ``all``); ``train_*``: MAE on
    ``fit``; ``baseline``: the one smaller on ``fit``; ``ratio_*`` and the headline ``ratio`` =
    model / chosen baseline (below 1: the model wins)."""
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
            "held_out_runs": val_runs, "store": resolved_store(store),
            "horizon_fit": {"runs": fit_runs, "windows": len(fit["target"]), "horizons": horizons,
                            "method": "exact minimiser of the training-sample MAE: the |slope|-weighted median "
                                      f"of each window's own best horizon, clamped to [0, {u:g}]"}}


