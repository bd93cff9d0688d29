"""The scaling run (``invwnn bench --protocol scaling``; docs/bench.md, "The scaling run"): the regime
where unlearning matters, thousands of training images and a Retrain that costs hours.

torchvision's ``resnet18(num_classes=10)`` with its ImageNet stem, as a user gets it, on Fashion-MNIST as
3x32x32 at growing training-set sizes; one recipe (Adam, ``batch_size``, ``lr``, ``epochs``) for the
original and Retrain at every size; each method run as the ``invwnn apply`` command runs it
(:func:`invwnn.unlearn.apply.unlearn`: the model (safetensors) and the forget, retain and test files
read, the method under the guard at its default bound, the output model and report written) at its
library defaults, timed whole, and its output measured against Retrain.

Built on the panel's machinery: every unit (a reference: Original and Retrain of one size, scenario and
seed; one per method) is a line of one resumable log (:func:`invwnn.bench.pool.run_logged`) under a key
hashing everything its result depends on, a method unit's key including the method code's fingerprint
(:func:`invwnn.bench.panel.code_fingerprint`) and its predictor file, so a change there reruns it;
Original and Retrain are measured by :func:`invwnn.bench.panel.reference_row` and cached in the
bench's cache (``<cache>/original-<hash>.pt``, ``retrain-<hash>.pt``). One original a size and seed
serves every scenario: nothing is mixed into its training (no mnemonic codes), every scenario draws the
same training images, and its cache key hashes the images and labels it saw, not the scenario's name
(a user has one model and several deletion requests). :mod:`invwnn.bench.scaling_report` writes the
table and the plot.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from invwnn.bench import panel, prepare, rows, scenarios
from invwnn.bench.measure import gaps
from invwnn.bench.pool import read_log, run_logged
from invwnn.errors import InputError
from invwnn.inputs import archs, models
from invwnn.inputs import prepare as original_mod
from invwnn.inputs.preprocess import Normalized, Preprocess
from invwnn.unlearn.apply import DEFAULT_MAX_DROP, Inputs, unlearn
from invwnn.unlearn.methods import REGISTRY, Context, Data

SCALING_VERSION = 1  # bump when a unit's result would change for reasons its key does not hold
DATASET = "fashion-mnist-rgb"
ARCH = "torchvision:resnet18:num_classes=10"
SIZES = (2000, 10000, 60000)
SCENARIOS = ("random10", "class")
# invwnn and invwnn+, and the two baselines with the smallest mean gap at their defaults on the
# architecture panel (docs/results/panel-targets.md: random-label 14.3, SalUn 14.4 over the four
# networks; the next, SSD, 26.2), also the two smallest on its ResNet-18 (9.2, 9.8)
METHODS = ("invwnn", "invwnn+", "random-label", "salun")
# The recipe: Adam at 5e-4 (in a probe at 1e-3 the eval-mode training accuracy of 2,000 images swung by
# several points from epoch to epoch, batch norm's statistics lagging the moving weights), batch 128,
# EPOCHS epochs at every size; docs/results/scaling.md records how near each original memorised its set.
EPOCHS = 15.0
# The miniature (``--quick``, the tests): two tiny sizes and torchvision's smallest classifier (0.35M
# parameters): invwnn's rewinder reads every weight, so on resnet18's 11M one of its runs takes minutes
# at any training-set size (10 min at 150 images on the shared machine). Batches of 16, so its batch
# norms see enough steps for eval mode to work (at 128, two steps an epoch, it stayed near chance).
QUICK = {"sizes": (100, 200), "epochs": 10.0, "batch_size": 16, "lr": 2e-3, "test_size": 100,
         "arch": "torchvision:shufflenet_v2_x0_5:num_classes=10"}


@dataclass(frozen=True)
class ScalingConfig:
    """What the scaling run runs: training-set ``sizes`` (images; 60000 is all of Fashion-MNIST's),
    ``scenarios`` (random10, class, label-noise), ``methods`` (registry methods, run as ``invwnn apply
    --method NAME`` runs them: at their library defaults), ``seeds``, the network ``arch``
    (``torchvision:NAME[:k=v,...]``), the one recipe of every original and Retrain (Adam at ``lr``,
    ``batch_size`` images a step, ``epochs`` over the training set), ``test_size`` test images, the
    guard's bound ``max_drop`` (points), where originals and Retrains are cached and the device.
    ``references`` is 0: no RMIA here (what :func:`invwnn.bench.panel.reference_row` reads)."""

    sizes: tuple[int, ...] = SIZES
    scenarios: tuple[str, ...] = SCENARIOS
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    arch: str = ARCH
    epochs: float = EPOCHS
    batch_size: int = 128
    lr: float = 5e-4
    test_size: int = 2000
    max_drop: float = DEFAULT_MAX_DROP
    cache_dir: str = "data/bench-cache"
    data_root: str | None = None
    device: str = "cpu"
    references: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 1 for s in self.sizes) or len(set(self.sizes)) != len(self.sizes):
            raise InputError(f"--sizes takes distinct training-set sizes >= 1, got {','.join(map(str, self.sizes))}")
        panel._names("scenario", self.scenarios, panel.SCENARIOS)
        registry = tuple(n for n in rows.ROWS if rows.ROWS[n].method == n)
        panel._names("method (the scaling run runs `invwnn apply --method NAME`)", self.methods, registry)
        if not self.seeds:
            raise InputError("the scaling run needs at least one seed")
        archs.parse_arch(self.arch)  # a bad --arch fails before anything trains
        if not (self.epochs > 0 and self.batch_size >= 1 and self.lr > 0 and self.test_size >= 0):
            raise InputError("the recipe needs epochs > 0, batch size >= 1, lr > 0 and test size >= 0")
        if self.references:
            raise InputError("the scaling run measures no RMIA (--references 0)")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def recipe(self) -> dict:
        return {"optimizer": "adam", "lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs}


def config_from(quick: bool = False, **fields: Any) -> ScalingConfig:
    """A :class:`ScalingConfig` of the fields given (None: the default; with ``quick`` the
    miniature's: :data:`QUICK`)."""
    given = {**(QUICK if quick else {}), **{k: v for k, v in fields.items() if v is not None}}
    return ScalingConfig(**given)


def scenario_config(size: int, name: str, config: ScalingConfig) -> scenarios.ScenarioConfig:
    """The bench scenario ``name`` at ``size`` training images with the run's recipe; no validation
    split (nothing is tuned) and no mnemonic codes (one original serves every scenario)."""
    return scenarios.scenario_config(name, dataset=DATASET, data_root=config.data_root, arch=config.arch,
                                     train_size=size, test_size=config.test_size, val_size=0, epochs=config.epochs,
                                     batch_size=config.batch_size, lr=config.lr, mnemonic_mix=0.0)


@dataclass(frozen=True)
class Unit:
    """One line of the log to make: the reference of ``size``, ``scenario`` and ``seed`` (``method``
    None: Original and Retrain) or ``method`` at its defaults on it; ``code``: the method code's
    fingerprint in the key. ``settings`` and ``overrides`` as the panel's units (what its
    :func:`invwnn.bench.panel.reference_row` reads)."""

    size: int
    scenario: scenarios.ScenarioConfig
    seed: int
    key: str
    method: str | None = None
    code: str = ""
    settings: tuple[str, ...] = ("defaults",)

    @property
    def group(self) -> tuple[int, str, int]:
        return self.size, self.scenario.name, self.seed

    @property
    def overrides(self) -> dict:
        return {}


def _key(*parts: Any) -> str:
    blob = json.dumps(["scaling", SCALING_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def plan(config: ScalingConfig) -> list[Unit]:
    """Every unit of ``config``, smallest size first, each (size, scenario, seed) reference first."""
    code = panel.code_fingerprint()
    units = []
    for size in sorted(config.sizes):
        for name in config.scenarios:
            scfg = scenario_config(size, name, config)
            for seed in config.seeds:
                units.append(Unit(size, scfg, seed, _key(scfg.to_dict(), seed, "reference", prepare.CACHE_VERSION)))
                units += [Unit(size, scfg, seed, _key(scfg.to_dict(), seed, m, rows.config(m).to_dict(),
                                                      rows.fingerprint(m, {}), config.max_drop, config.device, code),
                               m, code) for m in config.methods]
    return units


def network(arch: str, x: torch.Tensor, n_classes: int) -> Normalized:
    """A fresh ``arch`` behind the normalisation of images ``x`` (N, C, H, W) in [0, 1]."""
    pre = Preprocess(tuple(x.shape[2:]), x.shape[1], tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist()))
    net = archs.build_torchvision(archs.parse_arch(arch))
    out = net(torch.zeros(2, *pre.shape)).shape[1]
    if out != n_classes:
        raise InputError(f"{arch} has {out} outputs, the dataset {n_classes} classes")
    return Normalized(net, pre)


_PREPARED: dict[tuple, prepare.Prepared] = {}


def references(scfg: scenarios.ScenarioConfig, seed: int, config: ScalingConfig) -> prepare.Prepared:
    """``scfg``'s scenario for ``seed`` with its original (trained on the whole training set) and
    Retrain (on the retain part, from the same initialisation), each loaded from the bench's cache or
    trained there, memoised in this process. ``meta[which]["seconds"]``: training seconds."""
    memo = (scfg, seed, config.cache_dir, config.device)
    if memo in _PREPARED:
        return _PREPARED[memo]
    scn, device, cache = scenarios.build(scfg, seed), config.device, Path(config.cache_dir)
    pcfg = original_mod.PrepareConfig(dataset=scfg.dataset, epochs=scfg.epochs, lr=scfg.lr,
                                      batch_size=scfg.batch_size, seed=seed)
    torch.manual_seed(seed)
    orig = network(scfg.arch, scn.x, len(scn.classes))

    def train_original() -> dict:
        t0 = time.perf_counter()
        original_mod.train(orig.to(device), scn.x, scn.y, pcfg, None, device)
        orig.cpu()
        return {"seconds": time.perf_counter() - t0}

    labels = hashlib.sha256(scn.y.numpy().tobytes()).hexdigest()  # label-noise's original sees other labels
    key_o = _key("original", scfg.arch, pcfg.to_dict(), scn.fingerprint()["train"], labels, prepare.CACHE_VERSION)
    meta_o, hit_o = prepare._cached(cache / f"original-{key_o}.pt", orig, train_original)
    rcfg = prepare._retrain_config(scfg)
    retrained = network(scfg.arch, scn.x, len(scn.classes))

    def train_retrain() -> dict:
        ctx = Context(device=device, seed=seed, rebuild=lambda: network(scfg.arch, scn.x, len(scn.classes)))
        t0 = time.perf_counter()
        out = REGISTRY["retrain"].run(copy.deepcopy(orig).to(device), Data(scn.forget_split, scn.classes,
                                                                           scn.retain_split), rcfg, ctx)
        seconds = time.perf_counter() - t0
        retrained.load_state_dict(out.cpu().state_dict())
        return {"seconds": seconds}

    key_r = _key("retrain", scfg.to_dict(), seed, rcfg.to_dict(), prepare.CACHE_VERSION)
    meta_r, hit_r = prepare._cached(cache / f"retrain-{key_r}.pt", retrained, train_retrain)
    meta = {"original": {**meta_o, "cache_key": key_o, "cache_hit": hit_o, "config": config.recipe},
            "retrain": {**meta_r, "cache_key": key_r, "cache_hit": hit_r, "config": rcfg.to_dict()}}
    if len(_PREPARED) >= 4:  # a 60,000-image scenario holds about 2 GB of images
        _PREPARED.clear()
    _PREPARED[memo] = prepare.Prepared(scn, orig, retrained, None, meta)
    return _PREPARED[memo]


def write_inputs(prep: prepare.Prepared, folder: Path, arch: str) -> Inputs:
    """The files a user hands ``invwnn apply``: the original's weights as safetensors (no metadata:
    ``arch`` and the preprocessing come as flags) and forget, retain and test as uint8 tensor files."""
    from safetensors.torch import save_file

    scn, net = prep.scenario, prep.original
    save_file({k: v.detach().contiguous() for k, v in net.net.state_dict().items()}, folder / "model.safetensors")
    for name, split in (("forget", scn.forget_split), ("retain", scn.retain_split), ("test", scn.test)):
        torch.save({"x": (split.x * 255).round().to(torch.uint8), "y": split.y}, folder / f"{name}.pt")
    return Inputs(str(folder / "model.safetensors"), str(folder / "forget.pt"), str(folder / "retain.pt"),
                  str(folder / "test.pt"), classes=scn.classes, size=tuple(scn.x.shape[2:]), channels=scn.x.shape[1],
                  mean=tuple(net.mean.flatten().tolist()), std=tuple(net.std.flatten().tolist()), arch=arch)


def method_row(unit: Unit, prep: prepare.Prepared, ref: dict, config: ScalingConfig) -> dict:
    """Run the unit's method as the ``invwnn apply`` command runs (:func:`invwnn.unlearn.apply.unlearn`
    on files written first, untimed) and measure the model it wrote. ``seconds``: the method's (guard
    checks excluded); ``wall_seconds``: the whole command, reading, checks, evaluation before and
    after and writing included (not the interpreter's start); ``{"error": ...}`` on an input error."""
    with tempfile.TemporaryDirectory(prefix="invwnn-scaling-") as tmp:
        inputs = write_inputs(prep, Path(tmp), config.arch)
        out = Path(tmp) / "model.unlearned.safetensors"
        try:
            t0 = time.perf_counter()
            report = unlearn(inputs, unit.method, {}, out=str(out), seed=unit.seed, device=config.device,
                             max_drop=config.max_drop)
            wall = time.perf_counter() - t0
        except InputError as err:
            return {"error": str(err).splitlines()[0]}
        model = models.load(out, arch=config.arch).model
    state = model.state_dict()
    m = panel._measure(model, prep, config, unit.seed)
    retrain_s = ref["retrain"]["seconds"]
    return {**m, **gaps(m, ref["retrain"]), "config": report["config"], "seconds": report["seconds"],
            "wall_seconds": wall, "time_ratio": report["seconds"] / retrain_s, "wall_ratio": wall / retrain_s,
            "stop_reason": report["stop_reason"],
            "unchanged": all(torch.equal(v, state[k]) for k, v in prep.original.state_dict().items()),
            "finite": all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()),
            "backoffs": report["guard"].get("backoffs", []), "retreat": report["guard"].get("retreat"),
            "original_TA": ref["original"]["TA"], "warnings": report["warnings"]}


def scaling_unit(args: tuple) -> dict:
    """One unit (pool worker): ``(unit, config, ref)``, the group's reference row ``ref`` for a method."""
    unit, config, ref = args
    prep = references(unit.scenario, unit.seed, config)
    body = panel.reference_row(unit, prep, config) if unit.method is None else method_row(unit, prep, ref, config)
    return {"size": unit.size, "scenario": unit.scenario.name, "seed": unit.seed, "method": unit.method,
            "code": unit.code or None, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
            "load": os.getloadavg()[0], **body}  # a shared machine's load: how far its seconds are an idle one's


def run_scaling(config: ScalingConfig, state: str | Path, progress: bool = False,
                log: Callable[[str], None] = lambda s: None, jobs: int = 1,
                on_size: Callable[[dict[str, dict]], None] = lambda rows: None) -> dict[str, dict]:
    """Run every unit of ``config`` not yet in the log ``state`` over ``jobs`` processes, size by
    size (a size's references, then its methods, before the next size trains), calling ``on_size``
    with the whole log after each size (the largest takes days on a CPU: its report need not wait);
    returns key -> row of the whole log."""
    units = plan(config)
    for size in sorted(config.sizes):
        mine = [u for u in units if u.size == size]
        refs = run_logged(scaling_unit, [(u.key, (u, config, None)) for u in mine if u.method is None], state, jobs,
                          f"scaling {size}: originals + Retrain", progress, lambda row: log(describe(row)))
        by_group = {u.group: refs[u.key] for u in mine if u.method is None}
        run_logged(scaling_unit, [(u.key, (u, config, by_group[u.group])) for u in mine if u.method is not None],
                   state, jobs, f"scaling {size}: methods", progress, lambda row: log(describe(row)))
        on_size(read_log(state))
    return read_log(state)


def describe(row: dict) -> str:
    """One line on a finished unit (for the progress log)."""
    where = f"{row['size']} images, {row['scenario']}, seed {row['seed']}"
    if row["method"] is None:
        o, r = row["original"], row["retrain"]
        return (f"{where}: original train acc {o['train_acc']:.1f}% ({o['seconds']:.0f} s), Retrain train acc "
                f"{r['train_acc']:.1f}% ({r['seconds']:.0f} s)")
    if "error" in row:
        return f"{where} {row['method']}: {row['error']}"
    return (f"{where} {row['method']}: UA {row['UA']:.1f}, gap {row['gap']:.2f}, stop {row['stop_reason']}, "
            f"{row['time_ratio']:.3f} x Retrain (command {row['wall_ratio']:.3f} x)")
