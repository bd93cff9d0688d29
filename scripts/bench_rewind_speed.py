"""Writes docs/predictor.md's "Rewind speed" section: the learned rewind's coordinates per second
against its compute floor, before (the reference ``predict_past``) and after
(:class:`invwnn.rewind.fast.Folded`), and what skipping still windows (``StillLine``) gives.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_rewind_speed.py [--coords 11200000] [--repeats 5]
        [--share] [--predictor NAME=FILE ...] [--out data/bench_rewind_speed.json]

Speed: ``--coords`` seeded random-walk windows (the loop's (K, n) history), through the loop's own
:func:`invwnn.unlearn.methods.invwnn.rewind_all`, the timed part being what the loop times
(``history.T.contiguous()`` and the chunked calls); the old and new paths alternate in one process,
``--repeats`` rounds, median and range of wall and CPU seconds. The floor: the predictor's
multiply-adds x 2 x coordinates / the best torch.matmul FLOP/s measured here at its shapes.
``--share``: the panel's ResNet-18, random10, seed 0 (the bench cache, trained when missing), through
``apply`` for invwnn and invwnn+ at their defaults (``--share-reference``: through the old path too),
the report's ``rewind.share``;
the first rewind's real windows then measure ``StillLine`` (share skipped, change of the rewind).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from invwnn.files import atomic_write
from invwnn.rewind import LinearRewinder, make_rewinder
from invwnn.rewind.fast import Folded, StillLine, mac_per_window
from invwnn.rewind.predictor import LearnedRewinder, load_learned, predict_past
from invwnn.rewind.rewinders import stretched
from invwnn.unlearn.methods import REGISTRY
from invwnn.unlearn.methods.invwnn import rewind_all

SHAPES = ((8192, 64, 64), (8192, 64, 32), (8192, 15, 64), (65536, 64, 64))


@dataclass(frozen=True)
class Reference(LearnedRewinder):
    """The learned rewinder as it was before the fast path: :func:`predict_past` on the module."""

    def rewind(self, windows, kinds=None, layers=None):
        past = predict_past(self.model, windows, kinds, self.context(windows, layers))
        return stretched(windows, past, 1.0 if self.horizon is None else self.horizon / self.model.config.u)


class BFloat16:
    """``inner`` under the loop's ``--rewind-dtype bfloat16`` (CPU autocast)."""

    def __init__(self, inner):
        self.inner = inner

    def rewind(self, windows, kinds=None, layers=None):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner.rewind(windows, kinds, layers)


class Capture:
    """``inner`` that keeps a CPU copy of the windows of its first ``rewind`` call."""

    def __init__(self, inner):
        self.inner, self.windows, self.kinds = inner, None, None

    def rewind(self, windows, kinds=None, layers=None):
        if self.windows is None:
            self.windows, self.kinds = windows.cpu().clone(), kinds.cpu().clone()
        return self.inner.rewind(windows, kinds, layers)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def matmul_flops(repeats: int = 20) -> dict[str, float]:
    """Best FLOP/s of ``a @ b`` at each of :data:`SHAPES` (rows, inner, out) on this machine."""
    out = {}
    for m, k, n in SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        best = min(_timed(lambda: a @ b)[0] for _ in range(repeats))
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / best
    return out


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def random_history(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """(k, n) float32: n weights ~ N(0, 0.05) taking k - 1 Adam-like steps of 1e-3 with persistent drift."""
    g = torch.Generator().manual_seed(seed)
    h = torch.empty(k, n)
    h[0] = 0.05 * torch.randn(n, generator=g)
    drift = torch.randn(n, generator=g)
    for i in range(1, k):
        h[i] = h[i - 1] + 1e-3 * (drift + torch.randn(n, generator=g)).clamp(-1, 1)
    return h


def speed(paths: dict, n: int, repeats: int) -> dict[str, dict]:
    """Alternate every path ``name -> (rewinder, k, view)`` for ``repeats`` rounds on n coordinates;
    ``view``: the windows as ``history.T`` (no copy) instead of ``history.T.contiguous()``."""
    histories = {k: random_history(n, k) for k in {k for _, k, _ in paths.values()}}
    kinds = torch.zeros(n, dtype=torch.long)  # conv, as most of a ResNet
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, (rewinder, k, view) in paths.items():
            h = histories[k]
            with torch.no_grad():
                times[name].append(_timed(lambda: rewind_all(rewinder, h.T if view else h.T.contiguous(), kinds))[:2])
    return {name: {"coords": n, "wall": statistics.median(w for w, _ in t), "wall_range": [min(w for w, _ in t), max(w for w, _ in t)],
                   "cpu": statistics.median(c for _, c in t), "cpu_range": [min(c for _, c in t), max(c for _, c in t)],
                   "per_second": n / statistics.median(w for w, _ in t),
                   "per_cpu_second": n / statistics.median(c for _, c in t)} for name, t in times.items()}


def rewinders(k: int, extra: list[tuple[str, str]]) -> dict:
    """The old and new paths of the shipped predictor of window k, the line, and the ``extra`` checkpoints."""
    config = REGISTRY["invwnn" if k == 15 else "invwnn+"].config()
    new = make_rewinder("learned", config)
    out = {f"K={k} reference": Reference(new.model, new.path, new.horizon, new.step), f"K={k} fast": new,
           f"K={k} line": LinearRewinder(config.horizon)}
    for name, path in extra:
        learned = load_learned(path, horizon=config.horizon)
        if learned.k == k:
            out[f"K={k} {name}"] = learned
    return out


def still_line(windows: torch.Tensor, kinds: torch.Tensor, rewinder, thresholds) -> list[dict]:
    """For each threshold: share of windows handed to the line, and the change of the rewind
    (past - first value) over all windows, as a share of its norm (rms and max per coordinate in
    median spans)."""
    full = rewinder.rewind(windows, kinds)
    move = full - windows[:, 0]
    span = (windows.amax(1) - windows.amin(1)).median()
    rows = []
    for th in thresholds:
        skip = StillLine(rewinder, th, 3.0)
        wall, cpu, past = _timed(lambda: skip.rewind(windows, kinds))
        diff = past - full
        rows.append({"threshold": th, "skipped": skip.last["skipped"], "seconds": wall, "cpu": cpu,
                     "relative_change": float(diff.norm() / move.norm()),
                     "max_change_in_median_spans": float(diff.abs().max() / span)})
    return rows


def panel_original(seed: int = 0, cache: str = "data/bench-cache"):
    """The panel's ResNet-18 random10 original from the bench's cache, without its Retrain (the share
    needs none); both trained and cached by :func:`invwnn.bench.prepare.prepare_cached` when missing."""
    from invwnn.bench import panel, prepare, scenarios
    from invwnn.inputs import prepare as original_mod
    scfg = panel.scenario_config(panel.NETWORKS["resnet18"], "random10", panel.PanelConfig())
    pcfg = original_mod.PrepareConfig(dataset=scfg.dataset, epochs=scfg.epochs, lr=scfg.lr,
                                      batch_size=scfg.batch_size, mnemonic_mix=scfg.mnemonic_mix, seed=seed)
    path = Path(cache) / f"original-{scfg.key(seed, 'original', pcfg.to_dict(), prepare.CACHE_VERSION)}.pt"
    if not path.is_file():
        return prepare.prepare_cached(scfg, seed, cache)
    scn = scenarios.build(scfg, seed)
    g = torch.Generator().manual_seed(seed + 7919)  # prepare.prepare's mnemonic codes
    codes = torch.rand((len(scn.classes), *scn.x.shape[1:]), generator=g) if scfg.mnemonic_mix > 0 else None
    torch.manual_seed(seed)
    original = prepare.new_model(scfg, scn.x, len(scn.classes))
    blob = torch.load(path, map_location="cpu", weights_only=True)
    original.load_state_dict(blob["state_dict"])
    return prepare.Prepared(scn, original, None, codes, {"original": json.loads(blob["meta"])})


def share(thresholds, labels: tuple[str, ...]) -> dict:
    """invwnn and invwnn+ at their defaults on the panel's ResNet-18 random10 seed 0, through each
    of the paths ``labels`` ("reference", "fast")."""
    from invwnn.bench import panel
    from invwnn.unlearn.apply import apply
    from invwnn.unlearn.methods import Context, Data
    prep = panel_original()
    scn, out = prep.scenario, {"original": prep.meta["original"]}
    for method, k in (("invwnn", 15), ("invwnn+", 5)):
        config = REGISTRY[method].config()
        paths = rewinders(k, [])
        for label in (f"K={k} {label}" for label in labels):
            rewinder = Capture(paths[label])
            loaded = panel.loaded_model(prep)
            torch.manual_seed(0)
            report = apply(loaded, Data(scn.forget_split, scn.classes, scn.retain_split, scn.test, prep.codes),
                           method, config, Context(seed=0, rewinder=rewinder, rebuild=loaded.rebuild))
            out[f"{method} {label.split()[-1]}"] = {"seconds": report["seconds"], "rewind": report["rewind"],
                                                   "after": report["after"], "stop_reason": report["stop_reason"]}
            if label.endswith("fast"):
                out[f"{method} still_line"] = still_line(rewinder.windows, rewinder.kinds, paths[label], thresholds)
                out[f"{method} still_line"].insert(0, {"coordinates": len(rewinder.kinds)})
    return out


@click.command()
@click.option("--coords", default=11_200_000, show_default=True, help="Coordinates a rewind (ResNet-18: 11.2M; 0: no speed rounds).")
@click.option("--repeats", default=5, show_default=True)
@click.option("--share", "with_share", is_flag=True, help="Also the rewind's share of invwnn / invwnn+ on ResNet-18.")
@click.option("--share-reference", is_flag=True, help="--share through the reference path too (slow).")
@click.option("--predictor", multiple=True, help="NAME=FILE: another checkpoint to time (e.g. a distilled one).")
@click.option("--thresholds", default="0.05,0.1,0.25,0.5", show_default=True)
@click.option("--bf16-coords", default=1_000_000, show_default=True, help="Coordinates of the one bfloat16 round (0: none).")
@click.option("--out", default="data/bench_rewind_speed.json", show_default=True)
def main(coords, repeats, with_share, share_reference, predictor, thresholds, bf16_coords, out):
    extra = [tuple(p.split("=", 1)) for p in predictor]
    flops = matmul_flops()
    peak = max(flops.values())
    paths = {}
    for k in (15, 5):
        for name, rewinder in rewinders(k, extra).items():
            paths[name] = (rewinder, k, False)
        paths[f"K={k} fast, history.T view"] = (paths[f"K={k} fast"][0], k, True)
        paths[f"K={k} line, history.T view"] = (paths[f"K={k} line"][0], k, True)
    result = {"coords": coords, "repeats": repeats, "threads": torch.get_num_threads(), "matmul_flops": flops,
              "speed": speed(paths, coords, repeats) if coords else {}}
    paths = paths if coords else {}
    if bf16_coords and coords:  # 16x slower than float32 on a CPU without bfloat16 units: one round on fewer coordinates
        low = {"K=15 fast, bfloat16": (BFloat16(paths["K=15 fast"][0]), 15, False), "K=15 fast": paths["K=15 fast"]}
        result["bfloat16"] = {"coords": bf16_coords, **speed(low, bf16_coords, 1)}
        paths["K=15 fast, bfloat16"] = low["K=15 fast, bfloat16"]
        result["speed"]["K=15 fast, bfloat16"] = result["bfloat16"]["K=15 fast, bfloat16"]
    for name, (rewinder, k, _) in paths.items():
        model = getattr(getattr(rewinder, "inner", rewinder), "model", None)
        mac = mac_per_window(model.config) if model is not None else k
        r = result["speed"][name]
        r["flop_per_coordinate"] = 2 * mac
        r["floor_per_second"] = peak / (2 * mac)
        r["share_of_floor"] = r["per_cpu_second"] / r["floor_per_second"]  # CPU time: the load of other jobs aside
    if with_share:
        result["share"] = share([float(t) for t in thresholds.split(",")],
                                ("reference", "fast") if share_reference else ("fast",))
    result["versions"] = {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    print(f"matmul best {peak / 1e9:.1f} GFLOP/s ({', '.join(f'{s}: {f / 1e9:.1f}' for s, f in flops.items())}); "
          f"{torch.get_num_threads()} thread(s)")
    print("| path | FLOP/coord | coords/s (wall, median) | range | coords per CPU-s | floor coords/s | of floor |")
    print("|---|---|---|---|---|---|---|")
    for name, r in result["speed"].items():
        lo, hi = (r["coords"] / t for t in reversed(r["wall_range"]))
        print(f"| {name} | {r['flop_per_coordinate']:,} | {r['per_second'] / 1e3:,.0f}k | {lo / 1e3:,.0f}k-{hi / 1e3:,.0f}k "
              f"| {r['per_cpu_second'] / 1e3:,.0f}k | {r['floor_per_second'] / 1e3:,.0f}k | {100 * r['share_of_floor']:.0f}% |")
    if with_share:
        print(json.dumps(result["share"], indent=1))


if __name__ == "__main__":
    main()
