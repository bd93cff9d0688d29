"""Run a benchmark: per seed, build the scenario, train (or load from the cache) the original and
the retrained model, then run every method twice over in one pass:

- at its own default budget (the method's config defaults), and
- stopped when its unlearning accuracy first reaches Retrain's (the paper's equal-forgetting
  protocol): a :class:`Tracker` watches the run and keeps a copy of the weights the first time the
  forget accuracy on a fixed subset drops to Retrain's level. Fine-tuning-style methods are checked
  after optimizer steps (4 checks per doubling of the step count), InvWNN after each rewind
  (its fine-tuning steps move *away* from forgetting), task vector over its negation scale alpha;
  one-shot methods (UNSIR, mnemonic, Fisher) have no stopping point and report one result.

Check time is excluded from the methods' run times. Originals and retrained models are cached as
``<cache>/<content hash>.pt``, the hash covering the scenario config, the seed, the training
recipe and CACHE_VERSION (bump it when training code changes).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from tqdm.auto import tqdm

from invwnn import original as original_mod
from invwnn.bench import scenarios
from invwnn.bench.measure import gap, measure
from invwnn.forget import Split
from invwnn.methods import REGISTRY, Context, Data
from invwnn.methods.loop import Sampler, make_optimizer, run_steps
from invwnn.models import InputError, Normalized, Preprocess, atomic_write, is_finite
from trajgen import data as datasets
from trajgen import nets
from trajgen.spec import ArchSpec

CACHE_VERSION = 1

# bench name -> (registry name, rewinder kind for the rewinding methods). The -linear and -none rows
# are the ablations: analytic back-extrapolation instead of the predictor, and no rewind at all.
REWINDING = ("invwnn", "invwnn+")
BENCH_METHODS: dict[str, tuple[str, str | None]] = {
    **{name: (name, None) for name in REGISTRY if name not in ("retrain", *REWINDING)},
    **{f"{name}{suffix}": (name, kind) for name in REWINDING
       for suffix, kind in (("", "learned"), ("-linear", "linear"), ("-none", "none"))},
}
ORDER = ("invwnn+", "invwnn+-linear", "invwnn+-none", "invwnn", "invwnn-linear", "invwnn-none",
         "finetune", "neggrad", "neggrad+", "random-label", "salun", "boundary-shrink", "task-vector",
         "scrub", "fisher", "unsir", "mnemonic")
STOP_MODE = {"invwnn": "iteration", "invwnn+": "iteration", "task-vector": "alpha", "unsir": "none",
             "mnemonic": "none", "fisher": "none"}  # everything else: "step"


def method_names(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of bench method names, validated."""
    if spec.strip() == "all":
        return list(ORDER)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in BENCH_METHODS]
    if bad or not names:
        raise InputError(f"unknown method {bad[0] if bad else spec!r}; valid: all, {', '.join(ORDER)}")
    return names


TUNED = Path(__file__).with_name("tuned.json")


def tuned_overrides(path: str | Path | None = TUNED) -> dict[str, dict[str, Any]]:
    """Bench method name -> the hyperparameters ``scripts/tune.py`` chose (``path``: its output;
    None or a missing packaged file: no overrides). The invwnn+ choice also applies to its rewinder
    ablations, so that those rows differ in the rewinder alone."""
    if path is None or (Path(path) == TUNED and not TUNED.is_file()):
        return {}
    try:
        chosen = json.loads(Path(path).read_text())["chosen"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--tuned {path}: not a scripts/tune.py result ({type(err).__name__})") from None
    out = dict(chosen)
    for name, (reg, _) in BENCH_METHODS.items():
        if reg in chosen and name not in chosen:
            out[name] = chosen[reg]
    return out


@dataclass(frozen=True)
class BenchConfig:
    """How to run. ``method_overrides``: bench method name -> config field overrides;
    ``check_forget`` / ``check_test``: sizes of the fixed subsets the stopping checks measure."""

    methods: tuple[str, ...] = ORDER
    seeds: tuple[int, ...] = (0, 1, 2)
    cache_dir: str = "data/bench-cache"
    device: str = "cpu"
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=tuned_overrides)
    check_forget: int = 512
    check_test: int = 256
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def make_rewinder(kind: str, config, device: str) -> Any:
    """The InvWNN rewinder ``kind`` (learned: the shipped predictor) with its description; the
    learned one's description carries the checkpoint's sha256, as the checkpoint may change."""
    from invwnn.apply import make_rewinder as apply_rewinder
    rewinder = apply_rewinder(kind, None, config, device)
    desc = dict(rewinder.describe()) if hasattr(rewinder, "describe") else {"rewinder": kind}
    if "predictor" in desc:
        desc["sha256"] = hashlib.sha256(Path(desc["predictor"]).read_bytes()).hexdigest()
    return rewinder, desc


# ------------------------------------------------------------------------------------------------
# originals and retrained models, cached


@dataclass
class Prepared:
    """One seed's scenario with its original and retrained model (CPU copies) and their scores."""

    scenario: scenarios.Scenario
    original: Normalized
    retrain: Normalized
    codes: torch.Tensor | None
    meta: dict  # original/retrain: metrics, seconds, cache key, cache hit


def new_model(config: scenarios.ScenarioConfig, x: torch.Tensor, n_classes: int) -> Normalized:
    pre = Preprocess(tuple(x.shape[2:]), x.shape[1], tuple(x.mean((0, 2, 3)).tolist()),
                     tuple(x.std((0, 2, 3)).tolist()))
    arch = ArchSpec(config.arch, config.width, config.depth, config.activation)
    return Normalized(nets.build(arch, pre.shape, n_classes), pre)


def _prepare_config(config: scenarios.ScenarioConfig, seed: int) -> original_mod.PrepareConfig:
    return original_mod.PrepareConfig(dataset=config.dataset, epochs=config.epochs, lr=config.lr,
                                      batch_size=config.batch_size, mnemonic_mix=config.mnemonic_mix,
                                      seed=seed)


def _retrain_config(config: scenarios.ScenarioConfig):
    return REGISTRY["retrain"].config(epochs=config.epochs, optimizer="adam", lr=config.lr,
                                      batch_size=config.batch_size)


def _cached(path: Path, model: nn.Module, build: Callable[[], dict]) -> tuple[dict, bool]:
    """Load ``model``'s weights from ``path`` or run ``build()`` (which trains ``model`` in place
    and returns metadata) and store the result. Returns (metadata, cache hit)."""
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            return json.loads(blob["meta"]), True
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    meta = build()
    blob = {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "meta": json.dumps(meta)}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))
    return meta, False


def prepare(scn: scenarios.Scenario, cache_dir: str | Path, device: str = "cpu",
            progress: bool = False) -> Prepared:
    """Train (or load) the original on ``scn.x, scn.y`` and Retrain on the retain part."""
    cfg, seed = scn.config, scn.seed
    cache = Path(cache_dir)
    pcfg = _prepare_config(cfg, seed)
    g = torch.Generator().manual_seed(seed + 7919)
    codes = torch.rand((len(scn.classes), *scn.x.shape[1:]), generator=g) if cfg.mnemonic_mix > 0 else None
    torch.manual_seed(seed)
    orig = new_model(cfg, scn.x, len(scn.classes))

    def train_original() -> dict:
        t0 = time.perf_counter()
        orig.to(device)
        original_mod.train(orig, scn.x, scn.y, pcfg, codes, device, progress)
        if cfg.overfit_steps:  # the overfit scenario: excessive iterations on the forget part alone
            fs = scn.forget_split
            sample = Sampler(fs, min(cfg.batch_size, len(fs)), torch.Generator().manual_seed(seed), device)
            run_steps(orig, lambda _: _ce(orig, sample), make_optimizer("adam", orig.parameters(), cfg.lr),
                      cfg.overfit_steps, freeze_norms=False, progress=progress, desc="overfit")
        orig.cpu()
        return {"seconds": time.perf_counter() - t0}

    key_o = cfg.key(seed, "original", pcfg.to_dict(), CACHE_VERSION)
    meta_o, hit_o = _cached(cache / f"original-{key_o}.pt", orig, train_original)
    if codes is not None:
        meta_o["mnemonic_codes_seed"] = seed + 7919

    retrained = new_model(cfg, scn.x, len(scn.classes))
    rcfg = _retrain_config(cfg)

    def train_retrain() -> dict:
        t0 = time.perf_counter()
        ctx = Context(device=device, seed=seed, progress=progress,
                      rebuild=lambda: new_model(cfg, scn.x, len(scn.classes)))
        data = Data(scn.forget_split, scn.classes, scn.retain_split)
        fresh = REGISTRY["retrain"].run(copy.deepcopy(orig).to(device), data, rcfg, ctx)
        retrained.load_state_dict(fresh.cpu().state_dict())
        return {"seconds": time.perf_counter() - t0}

    key_r = cfg.key(seed, "retrain", rcfg.to_dict(), CACHE_VERSION)
    meta_r, hit_r = _cached(cache / f"retrain-{key_r}.pt", retrained, train_retrain)
    recipe = {k: pcfg.to_dict()[k] for k in ("epochs", "lr", "batch_size", "mnemonic_mix")}
    recipe.update(optimizer="adam", overfit_steps=cfg.overfit_steps)
    meta = {"original": {**meta_o, "cache_key": key_o, "cache_hit": hit_o, "config": recipe},
            "retrain": {**meta_r, "cache_key": key_r, "cache_hit": hit_r, "config": rcfg.to_dict()}}
    return Prepared(scn, orig, retrained, codes, meta)


def _ce(model: nn.Module, sample: Sampler) -> torch.Tensor:
    x, y = sample()
    return F.cross_entropy(model(x), y)


# ------------------------------------------------------------------------------------------------
# the stopping protocol


def due(step: int) -> bool:
    """Check after step ``step`` (1-based)? Four checks per doubling: steps 1-8 all, then every
    2nd up to 16, every 4th up to 32, ..."""
    interval = max(1, (1 << int(math.log2(step))) // 4)
    return step % interval == 0


class Tracker:
    """Watches one method run on ``model``: measures forget and test accuracy (percent) on fixed
    subsets at each check, records the trajectory, and keeps the weights of the first check whose
    UA (100 - forget acc) is at least ``target_ua``. ``check_seconds`` is the time spent checking."""

    def __init__(self, model: nn.Module, forget: Split, test: Split, target_ua: float, device: str):
        self.model, self.forget, self.test = model, forget, test
        self.target_ua, self.device = target_ua, device
        self.params = {id(p) for p in model.parameters()}
        self.steps, self.check_seconds, self.t0 = 0, 0.0, time.perf_counter()
        self.trajectory: list[dict] = []
        self.hit: tuple[dict, dict] | None = None

    def start(self) -> None:
        self.t0, self.check_seconds = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.check_seconds

    def on_step(self, optimizer, args, kwargs) -> None:
        # every optimizer in the process fires this hook: count only those training this model
        if not any(id(p) in self.params for g in optimizer.param_groups for p in g["params"]):
            return
        self.steps += 1
        if due(self.steps):
            self.check(step=self.steps)

    def on_iteration(self, i: int, model: nn.Module) -> None:
        self.check(step=self.steps, iteration=i + 1)

    @torch.no_grad()
    def _acc(self, split: Split) -> float:
        hit = 0
        for i in range(0, len(split), 1000):
            hit += (self.model(split.x[i:i + 1000].to(self.device)).argmax(1).cpu() == split.y[i:i + 1000]).sum().item()
        return 100.0 * hit / max(1, len(split))

    def check(self, **where) -> None:
        t = time.perf_counter()
        seconds = t - self.t0 - self.check_seconds
        modes = [m.training for m in self.model.modules()]  # keep frozen norms frozen afterwards
        self.model.eval()
        try:
            row = {**where, "forget_acc": self._acc(self.forget), "test_acc": self._acc(self.test),
                   "seconds": seconds}
        finally:
            for m, mode in zip(self.model.modules(), modes):
                m.training = mode
        self.trajectory.append(row)
        if self.hit is None and 100.0 - row["forget_acc"] >= self.target_ua:
            self.hit = (row, {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self.check_seconds += time.perf_counter() - t


def _subset(split: Split, n: int, seed: int) -> Split:
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.subset(idx.sort().values)


def run_method(name: str, prep: Prepared, target_ua: float, bench: BenchConfig, seed: int) -> dict:
    """Run bench method ``name`` on a copy of the original. Returns config, both results
    (``budget`` and ``equal``: metrics, seconds, gap), the trajectory and the stopping point, or
    ``{"error": message}`` when the method cannot run on this scenario."""
    reg, rewinder_kind = BENCH_METHODS[name]
    method = REGISTRY[reg]
    mode = STOP_MODE.get(reg, "step")
    scn, device = prep.scenario, bench.device
    try:
        config = method.config.from_dict(bench.method_overrides.get(name, {}))
        rewinder, rewinder_desc = make_rewinder(rewinder_kind, config, device) if rewinder_kind else (None, None)
    except InputError as err:
        return {"error": str(err)}
    model = copy.deepcopy(prep.original).to(device)
    fs, rs = scn.forget_split, scn.retain_split
    tracker = Tracker(model, _subset(fs, bench.check_forget, seed), _subset(scn.test, bench.check_test, seed),
                      target_ua, device)
    ctx = Context(device=device, seed=seed, rewinder=rewinder,
                  rebuild=lambda: new_model(scn.config, scn.x, len(scn.classes)),
                  on_iteration=tracker.on_iteration if mode == "iteration" else None)
    data = Data(fs, scn.classes, rs, None, prep.codes)
    handle = register_optimizer_step_post_hook(tracker.on_step) if mode == "step" else None
    torch.manual_seed(seed)
    tracker.start()
    try:
        result = method.run(model, data, config, ctx)
    except InputError as err:
        return {"error": str(err).splitlines()[0]}
    finally:
        if handle is not None:
            handle.remove()
    seconds = tracker.elapsed()
    if result is not model:
        model.load_state_dict(result.state_dict())
    if not is_finite(model):
        return {"error": "non-finite weights"}
    if mode == "alpha":
        _alpha_sweep(model, prep.original, config.alpha, tracker)
    out = {"config": config.to_dict(), "stop_mode": mode,
           "rewinder": rewinder_desc,
           "budget": _score(model, prep, seed, seconds), "trajectory": tracker.trajectory,
           "optimizer_steps": tracker.steps}
    if mode == "none":
        out["equal"] = {**out["budget"], "reached": out["budget"]["UA"] >= target_ua - 1e-9, "stopped_at": None}
    elif tracker.hit is None:
        out["equal"] = {**out["budget"], "reached": False, "stopped_at": None}
    else:
        row, state = tracker.hit
        model.load_state_dict(state)
        out["equal"] = {**_score(model, prep, seed, seconds if mode == "alpha" else row["seconds"]),
                        "reached": True, "stopped_at": row}
    return out


@torch.no_grad()
def _alpha_sweep(model: nn.Module, original: nn.Module, alpha: float, tracker: Tracker) -> None:
    """Task vector at 10%, 20%, ... 100% of ``alpha`` (the method's result is theta_0 - alpha *
    delta, so delta is recovered exactly); leaves the model at full alpha."""
    theta0 = [p.detach().to(tracker.device) for p in original.parameters()]
    delta = [(p0 - p) / alpha for p, p0 in zip(model.parameters(), theta0)]
    for f in [i / 10 for i in range(1, 11)]:
        for p, p0, d in zip(model.parameters(), theta0, delta):
            p.copy_(p0 - f * alpha * d)
        tracker.check(alpha=f * alpha)


def _score(model: nn.Module, prep: Prepared, seed: int, seconds: float) -> dict:
    scn = prep.scenario
    m = measure(model, scn.forget_split, scn.retain_split, scn.test, prep_device(model), seed, scn.extras)
    return {**m, "seconds": seconds}


def prep_device(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


# ------------------------------------------------------------------------------------------------
# the whole bench


def run(config: scenarios.ScenarioConfig, bench: BenchConfig,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """Every seed and method of one scenario. Returns the raw results (report.py aggregates)."""
    try:
        ds = datasets.load(config.dataset, root=config.data_root)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(str(err).splitlines()[0]) from None
    runs = []
    bar = tqdm(total=len(bench.seeds) * (len(bench.methods) + 1), desc=f"bench {config.name}",
               disable=not bench.progress)
    for seed in bench.seeds:
        bar.set_postfix_str(f"seed {seed}: original + retrain")
        scn = scenarios.build(config, seed, ds)
        prep = prepare(scn, bench.cache_dir, bench.device)
        bar.update(1)
        ref = {}
        for which, model in (("original", prep.original), ("retrain", prep.retrain)):
            model.to(bench.device)
            ref[which] = measure(model, scn.forget_split, scn.retain_split, scn.test, bench.device, seed, scn.extras)
            model.cpu()
        seed_run = {"seed": seed, "sizes": scn.sizes(), "original": {**ref["original"], **prep.meta["original"]},
                    "retrain": {**ref["retrain"], **prep.meta["retrain"]}, "methods": {}}
        ref_r = ref["retrain"]
        seed_run["original"]["gap"] = gap(ref["original"], ref_r)
        for name in bench.methods:
            bar.set_postfix_str(f"seed {seed}: {name}")
            r = run_method(name, prep, ref_r["UA"], bench, seed)
            for proto in ("budget", "equal"):
                if proto in r:
                    r[proto]["gap"] = gap(r[proto], ref_r)
                    r[proto]["time_ratio"] = r[proto]["seconds"] / max(prep.meta["retrain"]["seconds"], 1e-9)
            seed_run["methods"][name] = r
            log(f"seed {seed} {name}: " + (r["error"] if "error" in r else
                f"gap {r['budget']['gap']:.2f} (budget), {r['equal']['gap']:.2f} (equal UA)"))
            bar.update(1)
        runs.append(seed_run)
    bar.close()
    return {"scenario": config.to_dict(), "bench": bench.to_dict(), "runs": runs,
            "cache_version": CACHE_VERSION}
