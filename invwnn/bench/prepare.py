"""Originals and retrained models for a bench: one seed's scenario, its original (trained on the
whole training subset) and Retrain (trained on the retain part only), cached on disk as
``<cache>/<kind>-<content hash>.pt``, the hash covering the scenario config, the seed, the training
recipe and CACHE_VERSION (bump it when training code changes).

With ``amp`` (CUDA only) the training passes run under bfloat16 autocast (:func:`autocast`): bf16
keeps float32's exponent range, so no loss scaling is needed and the weights and optimizer state
stay float32; every measurement and every rewinder prediction runs in float32."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.inputs import prepare as original_mod
from invwnn.audit import rmia as privacy
from invwnn.bench import scenarios
from invwnn.bench.pool import map_units
from invwnn.unlearn.methods import REGISTRY, Context, Data
from invwnn.unlearn.methods.loop import Sampler, make_optimizer, run_steps
from invwnn.inputs.preprocess import Normalized, Preprocess
from invwnn.errors import InputError
from invwnn.files import atomic_write
from trajgen import nets
from trajgen.spec import make_arch

CACHE_VERSION = 1


def autocast(device: str, amp: bool):
    """bfloat16 autocast on ``device`` when ``amp`` (a CUDA device), else a no-op context."""
    if not amp:
        return contextlib.nullcontext()
    if not str(device).startswith("cuda"):
        raise InputError(f"mixed precision (--amp) needs a CUDA --device, got {device!r}")
    return torch.autocast("cuda", dtype=torch.bfloat16)


def full_precision(device: str):
    """A float32 region inside :func:`autocast` (measurements, rewinder predictions)."""
    return torch.autocast(str(device).split(":")[0], enabled=False) if str(device).startswith("cuda") \
        else contextlib.nullcontext()


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
    arch = make_arch(config.arch, config.width, config.depth, config.activation)
    return Normalized(nets.build(arch, pre.shape, n_classes), pre)


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
            progress: bool = False, amp: bool = False) -> Prepared:
    """Train (or load) the original on ``scn.x, scn.y`` and Retrain on the retain part (under
    bf16 autocast with ``amp``)."""
    cfg, seed = scn.config, scn.seed
    cache = Path(cache_dir)
    pcfg = original_mod.PrepareConfig(dataset=cfg.dataset, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                      mnemonic_mix=cfg.mnemonic_mix, seed=seed)
    g = torch.Generator().manual_seed(seed + 7919)
    codes = torch.rand((len(scn.classes), *scn.x.shape[1:]), generator=g) if cfg.mnemonic_mix > 0 else None
    torch.manual_seed(seed)
    orig = new_model(cfg, scn.x, len(scn.classes))

    def train_original() -> dict:
        t0 = time.perf_counter()
        orig.to(device)
        with autocast(device, amp):
            original_mod.train(orig, scn.x, scn.y, pcfg, codes, device, progress)
        if cfg.overfit_steps:  # the overfit scenario: excessive iterations on the forget part alone
            fs = scn.forget_split
            sample = Sampler(fs, min(cfg.batch_size, len(fs)), torch.Generator().manual_seed(seed), device)
            with autocast(device, amp):
                run_steps(orig, lambda _: _ce(orig, sample), make_optimizer("adam", orig.parameters(), cfg.lr),
                          cfg.overfit_steps, freeze_norms=False, progress=progress, desc="overfit")
        orig.cpu()
        return {"seconds": time.perf_counter() - t0}

    precision = ("bf16-autocast",) if amp else ()  # float32 entries keep their old keys
    key_o = cfg.key(seed, "original", pcfg.to_dict(), CACHE_VERSION, *precision)
    meta_o, hit_o = _cached(cache / f"original-{key_o}.pt", orig, train_original)
    if codes is not None:
        meta_o["mnemonic_codes_seed"] = seed + 7919

    rcfg = _retrain_config(cfg)
    retrained, meta_r, key_r, hit_r = _retrain_cached(scn, seed, cache, device, progress, amp)
    recipe = {k: pcfg.to_dict()[k] for k in ("epochs", "lr", "batch_size", "mnemonic_mix")}
    recipe.update(optimizer="adam", overfit_steps=cfg.overfit_steps, amp=amp)
    meta = {"original": {**meta_o, "cache_key": key_o, "cache_hit": hit_o, "config": recipe},
            "retrain": {**meta_r, "cache_key": key_r, "cache_hit": hit_r, "config": rcfg.to_dict()}}
    return Prepared(scn, orig, retrained, codes, meta)


def _retrain_cached(scn: scenarios.Scenario, seed: int, cache: Path, device: str, progress: bool,
                    amp: bool) -> tuple[Normalized, dict, str, bool]:
    """A model trained from scratch on ``scn``'s retain set by the retrain method under ``seed``
    (its initialisation and batch order), cached: (model, metadata, cache key, cache hit)."""
    cfg, rcfg = scn.config, _retrain_config(scn.config)
    retrained = new_model(cfg, scn.x, len(scn.classes))

    def train_retrain() -> dict:
        t0 = time.perf_counter()
        retrained.load_state_dict(_retrain(scn, retrained, seed, device, progress, amp).cpu().state_dict())
        return {"seconds": time.perf_counter() - t0}

    # the scenario's seed names its data; a reference model's own seed only its training
    extra = () if seed == scn.seed else (("reference", seed),)
    key = cfg.key(scn.seed, "retrain", rcfg.to_dict(), CACHE_VERSION, *(("bf16-autocast",) if amp else ()), *extra)
    meta, hit = _cached(cache / f"retrain-{key}.pt", retrained, train_retrain)
    return retrained, meta, key, hit


def references(prep: Prepared, k: int, cache_dir: str | Path, device: str = "cpu", amp: bool = False,
               progress: bool = False) -> list[Normalized]:
    """Retrain and ``k - 1`` more models trained like it on the retain set, each from its own
    initialisation and batch order (seed + 1000 j), cached: the references of offline RMIA."""
    scn = prep.scenario
    seeds = [scn.seed + privacy.REFERENCE_SEED_STEP * j for j in range(1, k)]
    more = [_retrain_cached(scn, seed, Path(cache_dir), device, progress, amp)[0] for seed in seeds]
    return [prep.retrain, *more]


_ATTACKS: dict[tuple, privacy.Attack | InputError] = {}


def attack_cached(prep: Prepared, k: int, cache_dir: str | Path, device: str = "cpu",
                  amp: bool = False) -> privacy.Attack:
    """The RMIA attack on ``prep``'s forget set and test split (validation images in a tuning view)
    with ``k`` references (:func:`references`, trained on ``device``), memoised in this process."""
    scn = prep.scenario
    key = (scn.config, scn.seed, "test" in scn.index, k, str(cache_dir), amp)
    if key not in _ATTACKS:
        if len(_ATTACKS) >= 32:
            _ATTACKS.clear()
        try:
            like = scn.like_forget()
            privacy.attack_splits(scn.forget_split, scn.test, scn.seed, like)  # too few images: refuse before training
            _ATTACKS[key] = privacy.Attack(references(prep, k, cache_dir, device, amp), scn.forget_split,
                                           scn.test, seed=scn.seed, like_forget=like)
        except InputError as err:
            _ATTACKS[key] = err
    if isinstance(_ATTACKS[key], InputError):
        raise _ATTACKS[key]
    return _ATTACKS[key]


def _ce(model: nn.Module, sample: Sampler) -> torch.Tensor:
    x, y = sample()
    return F.cross_entropy(model(x), y)


_PREPARED: dict[tuple, Prepared] = {}


def prepare_cached(config: scenarios.ScenarioConfig, seed: int, cache_dir: str | Path, device: str = "cpu",
                   tuning: bool = False, amp: bool = False) -> Prepared:
    """:func:`prepare` for ``config`` and ``seed``, memoised in this process (CPU models). With
    ``tuning`` the scenario is its :meth:`~scenarios.Scenario.for_tuning` view: validation images
    in the test split's place."""
    key = (config, seed, str(cache_dir), tuning, amp)
    if key not in _PREPARED:
        scn = scenarios.build(config, seed)
        prep = prepare(scn, cache_dir, device, amp=amp)
        if tuning:
            prep = dataclasses.replace(prep, scenario=scn.for_tuning())
        if len(_PREPARED) >= 32:  # a `--phase all` worker meets 6 scenarios x 4 seeds
            _PREPARED.clear()
        _PREPARED[key] = prep
    return _PREPARED[key]


def _retrain(scn: scenarios.Scenario, start: nn.Module, seed: int, device: str, progress: bool = False,
             amp: bool = False) -> nn.Module:
    """The retrain method on ``scn``'s retain set from a copy of ``start`` under ``seed``, on ``device``."""
    ctx = Context(device=device, seed=seed, progress=progress,
                  rebuild=lambda: new_model(scn.config, scn.x, len(scn.classes)))
    with autocast(device, amp):
        return REGISTRY["retrain"].run(copy.deepcopy(start).to(device), Data(scn.forget_split, scn.classes,
                                       scn.retain_split), _retrain_config(scn.config), ctx)


def time_retrain(config: scenarios.ScenarioConfig, seed: int, cache_dir: str | Path, device: str = "cpu",
                 amp: bool = False) -> float:
    """Seconds to retrain ``seed``'s model once more, exactly as :func:`prepare` does (the result
    is discarded): Retrain's time under whatever load the caller runs it in."""
    prep = prepare_cached(config, seed, cache_dir, amp=amp)
    t0 = time.perf_counter()
    _retrain(prep.scenario, prep.original, seed, device, amp=amp)
    return time.perf_counter() - t0


def _prepare_unit(args: tuple) -> dict:
    config, seed, cache_dir, device, amp = args
    return prepare_cached(config, seed, cache_dir, device, amp=amp).meta


def prepare_all(config: scenarios.ScenarioConfig, seeds: tuple[int, ...], cache_dir: str | Path,
                device: str = "cpu", jobs: int = 1, progress: bool = False, amp: bool = False) -> list[dict]:
    """Train (or find in the cache) every seed's original and Retrain, ``jobs`` seeds at a time."""
    units = [(config, seed, str(cache_dir), device, amp) for seed in seeds]
    return map_units(_prepare_unit, units, jobs, f"{config.name}: originals + Retrain", progress)
