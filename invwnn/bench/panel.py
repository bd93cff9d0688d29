"""The as-run protocol (the architecture panel): networks the project does not build itself, as people
use them, each on Fashion-MNIST as 3x32x32, and every row run the way a user runs it.

For each network, scenario (class, random10, label-noise) and seed: the bench's scenario, its
original and Retrain from the bench's cache, and each row through :func:`invwnn.unlearn.apply.apply`
(what ``invwnn apply`` runs, guard at its default bound) at the library defaults and at the bench's
tuned values (chosen on the bench's CNN; nothing is tuned per network: the panel shows what a user
meets), measured by :func:`invwnn.bench.measure.measure`. Each unit (a reference, Original and
Retrain, per network, scenario and seed; a run per distinct row config, one serving both settings
when the tuned values are the defaults) is a line of the bench's log under a key hashing
everything its result depends on. :mod:`invwnn.bench.panel_report` writes the tables and the plot.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from invwnn.audit import metrics
from invwnn.unlearn.apply import DEFAULT_MAX_DROP, apply
from invwnn.bench import prepare, rows, scenarios, search
from invwnn.bench.measure import gaps, measure
from invwnn.bench.pool import read_log, run_logged
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods import Context, Data, invwnn_plus
from invwnn.inputs.models import LoadedModel
from invwnn.inputs.preprocess import Preprocess
from invwnn.errors import InputError
from trajgen import nets
from trajgen.spec import make_arch

PANEL_VERSION = 1  # bump when a unit's result would change for reasons its key does not hold
SCENARIOS = ("class", "random10", "label-noise")
SETTINGS = ("defaults", "tuned")
METHODS = rows.PANEL
DATASET = "fashion-mnist-rgb"
# what the method rows' "code" fingerprint covers: the methods and the guard, what the panel tests
CODE = ("unlearn/methods/*.py", "unlearn/apply.py", "unlearn/guard.py")


@dataclass(frozen=True)
class PanelNet:
    """A panel network (``family``, ``width``, ``depth`` as in :class:`trajgen.spec.ArchSpec`) and
    the recipe of its original and Retrain: Adam at ``lr``, ``batch_size`` images a step,
    ``epochs`` over ``train_size`` training images."""

    family: str
    width: int
    depth: int
    train_size: int
    epochs: float
    batch_size: int = 64
    lr: float = 1e-3


# Each original trains in about two minutes on one CPU thread and nearly memorises its training set
# (docs/bench.md, "Sizes and speed", has the figures and why MobileNetV3 takes a tenth of the step).
# resnet18: CIFAR stem; convnext: ConvNeXt-T's widths, one block a stage; vit_tv: ViT-Ti's width and
# heads, patch 4, 4 of its 12 layers.
NETWORKS = {net.family: net for net in (
    PanelNet("resnet18", 64, 0, train_size=400, epochs=12),
    PanelNet("mobilenet_v3_small", 16, 0, train_size=1200, epochs=15, lr=2e-4),
    PanelNet("convnext", 96, 1, train_size=500, epochs=24),
    PanelNet("vit_tv", 192, 4, train_size=300, epochs=35, batch_size=16, lr=3e-4))}
# The miniature (``--quick``, the tests): tiny widths, a few hundred images, seconds per network.
QUICK_NETWORKS = {net.family: net for net in (
    PanelNet("resnet18", 8, 0, train_size=300, epochs=15),
    PanelNet("mobilenet_v3_small", 8, 0, train_size=300, epochs=15),
    PanelNet("convnext", 8, 1, train_size=300, epochs=25),
    PanelNet("vit_tv", 32, 1, train_size=300, epochs=60, batch_size=32, lr=2e-3))}
QUICK_TEST_SIZE = 200


def _names(kind: str, given: tuple[str, ...], valid: tuple[str, ...]) -> None:
    bad = [g for g in given if g not in valid]
    if bad or not given:
        raise InputError(f"unknown {kind} {bad[0] if bad else ''!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class PanelConfig:
    """What the panel runs: ``nets`` (:data:`NETWORKS`, or :data:`QUICK_NETWORKS` for the
    miniature), ``scenarios``, ``seeds``, ``methods`` (registry names), ``settings`` (``defaults``:
    library defaults; ``tuned``: the bench's tuning records), ``test_size`` test images a scenario,
    the guard's bound ``max_drop`` (points; ``invwnn apply``'s default), where originals and
    Retrains are cached, the device the methods run on, and ``references``: models trained on the
    retain set for offline RMIA and the five-term gap (0: none; each costs about a Retrain)."""

    nets: tuple[PanelNet, ...] = tuple(NETWORKS.values())
    scenarios: tuple[str, ...] = SCENARIOS
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    settings: tuple[str, ...] = SETTINGS
    test_size: int = 1000
    max_drop: float = DEFAULT_MAX_DROP
    cache_dir: str = "data/bench-cache"
    data_root: str | None = None
    device: str = "cpu"
    references: int = 0

    def __post_init__(self) -> None:
        if self.references == 1:
            raise InputError("--references takes 0 (no RMIA) or at least 2 (Retrain and more)")
        _names("scenario", self.scenarios, SCENARIOS)
        _names("method", self.methods, METHODS)
        _names("setting", self.settings, SETTINGS)
        if not self.nets or not self.seeds:
            raise InputError("the panel needs at least one network and one seed")

    def to_dict(self) -> dict:
        return asdict(self)


def scenario_config(net: PanelNet, scenario: str, config: PanelConfig) -> scenarios.ScenarioConfig:
    """The bench scenario ``scenario`` on ``net`` (its defaults, then the network's recipe); no
    validation split: nothing is tuned on the panel."""
    return scenarios.scenario_config(scenario, dataset=DATASET, data_root=config.data_root, arch=net.family,
                                     width=net.width, depth=net.depth, train_size=net.train_size,
                                     test_size=config.test_size, val_size=0, epochs=net.epochs,
                                     batch_size=net.batch_size, lr=net.lr)


@dataclass(frozen=True)
class Unit:
    """One line of ``units.jsonl`` to make: the reference of ``scenario`` and ``seed`` (``method``
    None: Original and Retrain), or ``method`` with ``overrides`` on its library defaults, under
    the names of the ``settings`` it stands for. ``key``: hash of everything its result depends on."""

    net: PanelNet
    scenario: scenarios.ScenarioConfig
    seed: int
    key: str
    method: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    settings: tuple[str, ...] = ()

    @property
    def group(self) -> tuple[str, str, int]:
        return self.net.family, self.scenario.name, self.seed


def _key(*parts: Any) -> str:
    blob = json.dumps([PANEL_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# Settings added after rows were written, at their defaults: left out of the keys. The first five leave
# those rows' results as they were (invwnn+ given retain data repairs on it whatever the neighbour
# settings); the restore phase's three (2026-12-07) do not: rows older than it ran without it, which
# their code fingerprint records and panel.md's fingerprint note counts.
LATER_SETTINGS = {k: getattr(invwnn_plus.Config(), k) for k in ("repair_on", "neighbour_copies", "neighbour_shift",
                                                                "rewinder", "predictor", "restore_steps",
                                                                "restore_within", "forget_slack")}


# Settings removed since rows were written, at the values the loops now always run with (no warm-up
# steps, no parameter mask): put back into the keys, so those rows are still found.
RETIRED_SETTINGS = {"invwnn": {"warmup": 0}, "invwnn+": {"warmup": 0, "mask": None}}


def _resolved(method: str, overrides: dict) -> dict | str:
    """The config ``method`` runs with (field -> value; :data:`LATER_SETTINGS` at those values left
    out, :data:`RETIRED_SETTINGS` put in), or why the overrides do not fit it."""
    try:
        config = {**RETIRED_SETTINGS.get(rows.ROWS[method].method, {}), **rows.config(method, overrides).to_dict()}
    except InputError as err:
        return f"error: {err}"
    return {k: v for k, v in config.items() if k not in LATER_SETTINGS or LATER_SETTINGS[k] != v}


def plan(config: PanelConfig) -> list[Unit]:
    """Every unit of ``config``, grouped by (network, scenario, seed), reference first."""
    units = []
    for net in config.nets:
        for name in config.scenarios:
            scfg = scenario_config(net, name, config)
            tuned = search.load(name)[0] if "tuned" in config.settings else {}
            # keys without RMIA stay those of the rows written before it existed
            refs = (("references", config.references),) if config.references else ()
            for seed in config.seeds:
                units.append(Unit(net, scfg, seed, _key(scfg.to_dict(), seed, "reference", prepare.CACHE_VERSION,
                                                        *refs)))
                for method in config.methods:
                    by_key: dict[str, Unit] = {}
                    for setting in config.settings:
                        overrides = {**rows.ROWS[method].fixed,
                                     **(tuned.get(method, {}) if setting == "tuned" else {})}
                        key = _key(scfg.to_dict(), seed, method, _resolved(method, overrides), config.max_drop,
                                   config.device, prepare.CACHE_VERSION, *refs)
                        same = by_key.get(key)
                        by_key[key] = Unit(net, scfg, seed, key, method, overrides,
                                           (same.settings if same else ()) + (setting,))
                    units += by_key.values()
    return units


def code_fingerprint() -> str:
    """sha256 (12 hex digits) of the method and guard sources (:data:`CODE`): which code a row ran."""
    root = Path(__file__).parents[1]
    h = hashlib.sha256()
    for path in sorted(p for pattern in CODE for p in root.glob(pattern)):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:12]


def _extras(scn: scenarios.Scenario) -> dict[str, Split]:
    """Extra test splits: for ``class``, the test images of the classes that stay."""
    if scn.config.name != "class":
        return {}
    keep = scn.test.y != scn.config.forget_class
    return {"other_classes": scn.test.subset(keep.nonzero().squeeze(1))}


def _measure(model: torch.nn.Module, prep: prepare.Prepared, config: PanelConfig, seed: int) -> dict[str, float]:
    scn = prep.scenario
    attack = prepare.attack_cached(prep, config.references, config.cache_dir, config.device) \
        if config.references else None
    device = str(next(model.parameters()).device)
    return measure(model, scn.forget_split, scn.retain_split, scn.test, device, seed, _extras(scn), attack)


def reference_row(unit: Unit, prep: prepare.Prepared, config: PanelConfig) -> dict:
    """Original and Retrain measured on the unit's splits, with their training seconds and training
    accuracy (percent; the original's on its whole training set as trained: how near memorised)."""
    scn = prep.scenario
    row: dict[str, Any] = {"sizes": scn.sizes(), "data": scn.fingerprint(), "params": nets.n_params(prep.original)}
    for which, model, split in (("original", prep.original, Split(scn.x, scn.y, "train")),
                                ("retrain", prep.retrain, scn.retain_split)):
        row[which] = {**_measure(model, prep, config, unit.seed), "seconds": prep.meta[which]["seconds"],
                      "train_acc": metrics.accuracy(model, split.x, split.y), "cache_key": prep.meta[which]["cache_key"]}
    row["original"].update(gaps(row["original"], row["retrain"]))
    return row


def loaded_model(prep: prepare.Prepared) -> LoadedModel:
    """A copy of the original as :func:`invwnn.inputs.models.load` returns a file in the project's own
    format: architecture, classes, recorded preprocessing and mnemonic codes."""
    scn, net = prep.scenario, copy.deepcopy(prep.original)
    pre = Preprocess(tuple(scn.x.shape[2:]), scn.x.shape[1], tuple(net.mean.flatten().tolist()),
                     tuple(net.std.flatten().tolist()))
    c = scn.config
    arch = asdict(make_arch(c.arch, c.width, c.depth, c.activation))
    return LoadedModel(net, scn.classes, pre, "own", arch=arch, mnemonic=prep.codes)


def method_row(unit: Unit, prep: prepare.Prepared, ref: dict, config: PanelConfig) -> dict:
    """Run the unit's method through :func:`invwnn.unlearn.apply.apply` on a copy of the original and
    measure the result (``ref``: the group's reference row); ``{"error": ...}`` when the method
    cannot run here (an input error). ``seconds``: the method's, guard checks excluded (the
    report's); ``wall_seconds``: the whole ``apply`` call."""
    scn, device = prep.scenario, config.device
    loaded = loaded_model(prep)
    try:
        name = rows.ROWS[unit.method].method
        method_config = rows.config(unit.method, unit.overrides)
        rewinder = rows.make_rewinder(unit.method, method_config, device)[0]
        ctx = Context(device=device, seed=unit.seed, rewinder=rewinder, rebuild=loaded.rebuild)
        torch.manual_seed(unit.seed)
        t0 = time.perf_counter()
        report = apply(loaded, Data(scn.forget_split, scn.classes, scn.retain_split, scn.test, prep.codes),
                       name, method_config, ctx, config.max_drop)
    except InputError as err:
        return {"error": str(err).splitlines()[0]}
    wall = time.perf_counter() - t0
    model = loaded.model
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    m = _measure(model, prep, config, unit.seed)
    return {**m, **gaps(m, ref["retrain"]), "config": method_config.to_dict(),
            "seconds": report["seconds"], "wall_seconds": wall,
            "time_ratio": report["seconds"] / ref["retrain"]["seconds"],
            "stop_reason": report["stop_reason"],
            "unchanged": all(torch.equal(v, state[k]) for k, v in prep.original.state_dict().items()),
            "finite": all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()),
            "backoffs": report["guard"].get("backoffs", []), "retreat": report["guard"].get("retreat"),
            "calibration": report.get("calibration"),
            "original_TA": ref["original"]["TA"], "warnings": report["warnings"]}


def panel_unit(args: tuple) -> dict:
    """One unit (pool worker): ``(unit, config, ref)``, the group's reference row ``ref`` for a method."""
    unit, config, ref = args
    prep = prepare.prepare_cached(unit.scenario, unit.seed, config.cache_dir, config.device)
    body = reference_row(unit, prep, config) if unit.method is None else method_row(unit, prep, ref, config)
    return {"network": unit.net.family, "scenario": unit.scenario.name, "seed": unit.seed, "method": unit.method,
            "settings": list(unit.settings), "overrides": unit.overrides, "code": code_fingerprint(), **body}


def run_panel(config: PanelConfig, state: str | Path, progress: bool = False,
              log: Callable[[str], None] = lambda s: None, jobs: int = 1) -> dict[str, dict]:
    """Run every unit of ``config`` not yet in the log ``state`` over ``jobs`` processes, the
    references (Original, Retrain) first; returns key -> row of the whole log."""
    units = plan(config)
    refs = run_logged(panel_unit, [(u.key, (u, config, None)) for u in units if u.method is None], state, jobs,
                      "panel: originals + Retrain", progress, lambda row: log(_describe(row)))
    by_group = {u.group: refs[u.key] for u in units if u.method is None}
    run_logged(panel_unit, [(u.key, (u, config, by_group[u.group])) for u in units if u.method is not None], state,
               jobs, "panel: rows", progress, lambda row: log(_describe(row)))
    return read_log(state)


def _describe(row: dict) -> str:
    where = f"{row['network']} {row['scenario']} seed {row['seed']}"
    if row["method"] is None:
        o = row["original"]
        return f"{where}: original train acc {o['train_acc']:.1f}%, UA {o['UA']:.1f}, Retrain {row['retrain']['seconds']:.0f} s"
    if "error" in row:
        return f"{where} {row['method']}: {row['error']}"
    return (f"{where} {row['method']} ({', '.join(row['settings'])}): UA {row['UA']:.1f}, gap {row['gap']:.2f}, "
            f"stop {row['stop_reason']}, {row['time_ratio']:.2f} x Retrain")


def config_from(networks: tuple[str, ...] | None, quick: bool, **fields: Any) -> PanelConfig:
    """A :class:`PanelConfig` for network names (None: all) of :data:`NETWORKS`, or with ``quick``
    of the miniature's (with :data:`QUICK_TEST_SIZE` test images), and the other fields given (None:
    the default)."""
    table = QUICK_NETWORKS if quick else NETWORKS
    networks = tuple(table) if networks is None else networks
    _names("network", networks, tuple(table))
    given = {"test_size": QUICK_TEST_SIZE if quick else None, **fields}
    return PanelConfig(nets=tuple(table[n] for n in networks), **{k: v for k, v in given.items() if v is not None})

