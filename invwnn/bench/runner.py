"""Run a benchmark: per seed, build the scenario, train (or load from the cache) the original and
the retrained model, then run every method (in worker processes with ``jobs > 1``) twice over in
one pass:

- at its own default budget (the method's config defaults), and
- stopped when its unlearning accuracy first reaches Retrain's (the paper's equal-forgetting
  protocol): a :class:`Tracker` watches the run and keeps a copy of the weights the first time the
  forget accuracy on a fixed subset drops to Retrain's level. Fine-tuning-style methods are checked
  after optimizer steps (4 checks per doubling of the step count, and once more at their end),
  InvWNN after each rewind
  (its fine-tuning steps move *away* from forgetting), task vector over its negation scale alpha;
  one-shot methods (UNSIR, mnemonic, Fisher) have no stopping point and report one result.

Check time is excluded from the methods' run times. Originals and retrained models come from
:mod:`invwnn.bench.prepare` (cached on disk); hyperparameters from :mod:`invwnn.bench.search`.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from invwnn.bench import scenarios
from invwnn.bench.measure import gaps, measure
from invwnn.bench.pool import map_units
from invwnn.bench.prepare import (CACHE_VERSION, Prepared, attack_cached, autocast, full_precision, new_model,
                                   prepare_all, prepare_cached, time_retrain)
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods import REGISTRY, Context, Data
from invwnn.unlearn.methods.loop import trains
from invwnn.inputs.models import is_finite
from invwnn.errors import InputError
from invwnn.rewind.predictor import CheckpointError, default_checkpoint, read_checkpoint
from invwnn.audit.rmia import Attack


# bench name -> (registry name, rewinder kind for the rewinding methods). The suffixed rows are the
# rewinder ablations and controls: -linear (a least-squares line, its horizon tuned), -reset (each
# window's first value written back: the forget fine-tuning undone, only invwnn+'s repair steps
# remain) and -none (the fine-tuned weights kept: no rewind, plus forget-set training).
REWINDING = ("invwnn", "invwnn+")
REWINDER_ROWS = (("", "learned"), ("-linear", "linear"), ("-reset", "reset"), ("-none", "none"))
# invwnn+ with other K = 5 predictors than the shipped one (trained on whole training runs), issue 15:
# -episodes, trained on the first windows of fine-tuning episodes (`trajgen episodes`); -episodes-context,
# the same with the "step" and "layer" context inputs (`invwnn train --context step,layer`); -twins, trained
# to predict counterfactual twins' weights (`trajgen twins`); -runs500, trained on the 500-run collection
# `trajgen collect --archs cnn,vit --runs 500`; -runs500-episodes, that one fine-tuned on the episodes'
# first windows (`invwnn train --init`); -twins48, -twins's recipe on 48 twins instead of 15. Rewinder
# kind -> checkpoint file.
PREDICTOR_FILES = {"episodes": "episode_predictor_k5.pt", "episodes-context": "episode_context_predictor_k5.pt",
                   "twins": "twin_predictor_k5.pt", "runs500": "runs500_predictor_k5.pt",
                   "runs500-episodes": "runs500_episode_predictor_k5.pt", "twins48": "twins48_predictor_k5.pt"}
# Lines in other loops than invwnn+'s (a snapshot every step): -linear-every4, the line in -runs500's
# loop (a snapshot every 4 steps, see search.FIXED), isolates that row's predictor from its spacing;
# -linear-spacing searches the spacing (1, 2 or 4 steps) with the rest of the line's settings.
LINE_ROWS = {"invwnn+-linear-every4": ("invwnn+", "linear"), "invwnn+-linear-spacing": ("invwnn+", "linear")}
# The rewinder meta-trained on the unlearning objective (`invwnn meta-train`, issue 24).
META_FILES = {"meta": "meta_rewinder_k5.pt"}
BENCH_METHODS: dict[str, tuple[str, str | None]] = {
    **{name: (name, None) for name in REGISTRY if name not in ("retrain", *REWINDING)},
    **{f"{name}{suffix}": (name, kind) for name in REWINDING for suffix, kind in REWINDER_ROWS},
    **{f"invwnn+-{kind}": ("invwnn+", kind) for kind in PREDICTOR_FILES},
    **LINE_ROWS,
    **{f"{name}-{kind}": (name, kind) for name in REWINDING for kind in META_FILES},
    # the line in the forget-only meta row's window of 5 snapshots (search.FIXED): its control on the
    # panel, isolating the rewinder from the shorter window; not benched (not in ORDER)
    "invwnn-linear-k5": ("invwnn", "linear"),
    # invwnn+ as it runs on forget data only, its repair on the forget images' neighbours
    # (search.FIXED) although retain data is at hand (the guard watches it, as for the invwnn row):
    # on the panel beside the forget-only invwnn; not benched
    "invwnn+-neighbours": ("invwnn+", "learned"),
}
ORDER = (*(f"invwnn+{s}" for s, _ in REWINDER_ROWS), *(f"invwnn+-{k}" for k in PREDICTOR_FILES), *LINE_ROWS,
         *(f"invwnn+-{k}" for k in META_FILES),
         *(f"invwnn{s}" for s, _ in REWINDER_ROWS),
         "finetune", "neggrad", "neggrad+", "random-label", "salun", "boundary-shrink", "task-vector",
         "scrub", "fisher", "unsir", "mnemonic", "ssd", "l1-sparse", "regun", "amun")
STOP_MODE = {"invwnn": "iteration", "invwnn+": "iteration", "task-vector": "alpha", "unsir": "none",
             "mnemonic": "none", "fisher": "none", "ssd": "none"}  # everything else: "step"


def method_names(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of bench method names, validated."""
    if spec.strip() == "all":
        return list(ORDER)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in BENCH_METHODS]
    if bad or not names:
        raise InputError(f"unknown method {bad[0] if bad else spec!r}; valid: all, {', '.join(ORDER)}")
    return names


@dataclass(frozen=True)
class BenchConfig:
    """How to run. ``method_overrides``: bench method name -> config field overrides (the tuning
    record's choices; see :mod:`invwnn.bench.search`); ``check_forget`` / ``check_test``: sizes of
    the fixed subsets the stopping checks measure; ``jobs``: worker processes; ``amp``: bf16
    autocast for every training pass on a CUDA device (originals, Retrain, the methods' steps;
    checks, metrics and rewinder predictions stay float32); ``predictors``: checkpoints the
    learned rows (``invwnn``, ``invwnn+``) read instead of the shipped ones, each row the one whose
    window K is its snapshots (predictors trained on the bench's own architecture, as
    ``scripts/paper_scale.sh`` does); ``references``: models trained on the retain set for offline
    RMIA (Retrain and ``references - 1`` more, :func:`invwnn.bench.prepare.references`; 0: none)."""

    methods: tuple[str, ...] = ORDER
    seeds: tuple[int, ...] = (0, 1, 2)
    cache_dir: str = "data/bench-cache"
    device: str = "cpu"
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_forget: int = 512
    check_test: int = 256
    progress: bool = True
    jobs: int = 1
    amp: bool = False
    predictors: tuple[str, ...] = ()
    references: int = 4

    def __post_init__(self) -> None:
        if self.references == 1:
            raise InputError("--references takes 0 (no RMIA) or at least 2 (Retrain and more)")
        if self.amp and not str(self.device).startswith("cuda"):
            raise InputError(f"mixed precision (--amp) needs a CUDA --device, got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def predictor_path(kind: str | None, config, predictors: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint a rewinder ``kind`` reads for an invwnn ``config`` (None: it reads none):
    learned, the first of ``predictors`` whose window K is the config's snapshots, else the shipped
    predictor of that window; episodes / twins, :data:`PREDICTOR_FILES`."""
    if kind in PREDICTOR_FILES or kind in META_FILES:
        return Path(__file__).parents[1] / "rewind" / "predictors" / {**PREDICTOR_FILES, **META_FILES}[kind]
    if kind != "learned":
        return None
    for path in predictors:
        try:
            if read_checkpoint(path)["model_config"].k == config.snapshots:
                return Path(path)
        except CheckpointError as err:
            raise InputError(f"--predictor: {err}") from None
    return default_checkpoint(config.snapshots)


def make_rewinder(kind: str, config, device: str, predictors: tuple[str, ...] = ()) -> Any:
    """The InvWNN rewinder ``kind`` (learned: one of ``predictors`` or the shipped predictor, see
    :func:`predictor_path`; episodes, twins: the ones of :data:`PREDICTOR_FILES`) with its
    description; a learned one's description carries the checkpoint's sha256, as the checkpoint
    may change."""
    from invwnn.unlearn.apply import make_rewinder as apply_rewinder
    if kind in META_FILES:
        rewinder = apply_rewinder("meta", str(predictor_path(kind, config)), config, device)
    elif kind in PREDICTOR_FILES or (kind == "learned" and predictors):
        rewinder = apply_rewinder("learned", str(predictor_path(kind, config, predictors)), config, device)
    else:
        rewinder = apply_rewinder(kind, None, config, device)
    desc = dict(rewinder.describe()) if hasattr(rewinder, "describe") else {"rewinder": kind}
    if "predictor" in desc:
        desc["sha256"] = hashlib.sha256(Path(desc["predictor"]).read_bytes()).hexdigest()
    return rewinder, desc


class FullPrecision:
    """A rewinder whose predictions run in float32 even inside an autocast region."""

    def __init__(self, inner: Any, device: str):
        self.inner, self.device = inner, device

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        with full_precision(self.device):
            return self.inner.rewind(windows.float(), kinds, layers)

    def __getattr__(self, name: str) -> Any:  # k, describe(), ... of the wrapped rewinder
        return getattr(self.inner, name)


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
        if not trains(optimizer, self.params):
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
        with full_precision(self.device):
            self._check(where)

    def _check(self, where: dict) -> None:
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
        rewinder, rewinder_desc = (make_rewinder(rewinder_kind, config, device, bench.predictors) if rewinder_kind
                                   else (None, None))
        if rewinder is not None and bench.amp:
            rewinder = FullPrecision(rewinder, device)
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
    _warm_up(model, fs, device)
    handle = register_optimizer_step_post_hook(tracker.on_step) if mode == "step" else None
    torch.manual_seed(seed)
    tracker.start()
    try:
        with autocast(device, bench.amp):
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
    if mode == "step" and tracker.hit is None and tracker.steps and \
            (not tracker.trajectory or tracker.trajectory[-1].get("step") != tracker.steps):
        tracker.check(step=tracker.steps, final=True)  # the state the method ended in counts too
    if mode == "alpha":
        _alpha_sweep(model, prep.original, config.alpha, tracker)
    out = {"config": config.to_dict(), "stop_mode": mode,
           "rewinder": rewinder_desc,
           "budget": _score(model, prep, bench, seed, seconds), "trajectory": tracker.trajectory,
           "optimizer_steps": tracker.steps}
    if mode == "none":
        out["equal"] = {**out["budget"], "reached": out["budget"]["UA"] >= target_ua - 1e-9, "stopped_at": None}
    elif tracker.hit is None:
        out["equal"] = {**out["budget"], "reached": False, "stopped_at": None}
    else:
        row, state = tracker.hit
        model.load_state_dict(state)
        out["equal"] = {**_score(model, prep, bench, seed, seconds if mode == "alpha" else row["seconds"]),
                        "reached": True, "stopped_at": row}
    return out


_WARM: set[str] = set()


def _warm_up(model: nn.Module, forget: Split, device: str) -> None:
    """On an accelerator, one forward and backward pass on a copy before the first timed run in
    this process, so that the first method's time does not include kernel loading."""
    if device == "cpu" or device in _WARM:
        return
    twin = copy.deepcopy(model)
    twin(forget.x[:128].to(device)).sum().backward()
    _WARM.add(device)


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


def attack_for(prep: Prepared, bench: BenchConfig) -> Attack | None:
    """The RMIA attack of ``prep`` with ``bench.references`` references; None without references
    or when the scenario's test split is too small for it (warned)."""
    if not bench.references:
        return None
    try:
        return attack_cached(prep, bench.references, bench.cache_dir, bench.device, bench.amp)
    except InputError as err:
        warnings.warn(f"no RMIA on {prep.scenario.config.name} seed {prep.scenario.seed}: {err}", stacklevel=2)
        return None


def _score(model: nn.Module, prep: Prepared, bench: BenchConfig, seed: int, seconds: float) -> dict:
    scn = prep.scenario
    m = measure(model, scn.forget_split, scn.retain_split, scn.test, prep_device(model), seed, scn.extras,
                attack_for(prep, bench))
    return {**m, "seconds": seconds}


def prep_device(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


# ------------------------------------------------------------------------------------------------
# the whole bench


def _unit(args: tuple) -> dict:
    """One pool unit: bench method ``name`` on ``seed``, or with ``name`` None, Retrain timed under
    the same load as the methods (the denominator of their time ratios when ``jobs > 1``)."""
    config, bench, seed, name, target_ua = args
    if name is None:
        return {"seconds": time_retrain(config, seed, bench.cache_dir, bench.device, bench.amp)}
    return run_method(name, prepare_cached(config, seed, bench.cache_dir, amp=bench.amp), target_ua, bench, seed)


def plan(config: scenarios.ScenarioConfig, bench: BenchConfig) -> tuple[list[dict], list[tuple]]:
    """Every seed's reference results (Original, Retrain; their models must be prepared) and the
    pool units that run the methods."""
    seed_runs, units = [], []
    for seed in bench.seeds:
        prep = prepare_cached(config, seed, bench.cache_dir, amp=bench.amp)
        scn = prep.scenario
        attack = attack_for(prep, bench)
        ref = {which: measure(model, scn.forget_split, scn.retain_split, scn.test, "cpu", seed, scn.extras, attack)
               for which, model in (("original", prep.original), ("retrain", prep.retrain))}
        seed_run = {"seed": seed, "sizes": scn.sizes(), "data": scn.fingerprint(),
                    "original": {**ref["original"], **prep.meta["original"]},
                    "retrain": {**ref["retrain"], **prep.meta["retrain"]}, "methods": {}}
        seed_run["original"].update(gaps(ref["original"], ref["retrain"]))
        seed_runs.append(seed_run)
        units += [(config, bench, seed, name, ref["retrain"]["UA"]) for name in bench.methods]
        if bench.jobs > 1:
            units.append((config, bench, seed, None, None))
    return seed_runs, units


def assemble(config: scenarios.ScenarioConfig, bench: BenchConfig, tuning: dict | None, seed_runs: list[dict],
             units: list[tuple], results: list[dict], log: Callable[[str], None] = lambda s: None) -> dict:
    """The raw results of one scenario from :func:`plan`'s output and its units' results."""
    by_seed = {r["seed"]: r for r in seed_runs}
    for (_, _, seed, name, _), r in zip(units, results):
        if name is None:
            by_seed[seed]["retrain"].update(seconds_prepare=by_seed[seed]["retrain"]["seconds"],
                                            seconds=r["seconds"], timing="pool")
    for (_, _, seed, name, _), r in zip(units, results):
        if name is None:
            continue
        ref_r = by_seed[seed]["retrain"]
        for proto in ("budget", "equal"):
            if proto in r:
                r[proto].update(gaps(r[proto], ref_r))
                r[proto]["time_ratio"] = r[proto]["seconds"] / max(ref_r["seconds"], 1e-9)
        by_seed[seed]["methods"][name] = r
        log(f"seed {seed} {name}: " + (r["error"] if "error" in r else
            f"gap {r['budget']['gap']:.2f} (budget), {r['equal']['gap']:.2f} (equal UA, reached {r['equal']['reached']})"))
    return {"scenario": config.to_dict(), "bench": bench.to_dict(), "tuning": tuning, "runs": seed_runs,
            "cache_version": CACHE_VERSION}


def run(config: scenarios.ScenarioConfig, bench: BenchConfig, tuning: dict | None = None,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """Every seed and method of one scenario (``bench.jobs`` worker processes). ``tuning``: the
    search record whose choices ``bench.method_overrides`` holds, copied into the results.
    Returns the raw results (report.py aggregates)."""
    prepare_all(config, bench.seeds, bench.cache_dir, bench.device, bench.jobs, bench.progress, bench.amp)
    seed_runs, units = plan(config, bench)
    results = map_units(_unit, units, bench.jobs, f"bench {config.name}", bench.progress)
    return assemble(config, bench, tuning, seed_runs, units, results, log)
