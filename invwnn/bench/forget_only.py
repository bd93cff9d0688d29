"""The forget-only protocol: models the project never trained, unlearned from their files through the
library call behind ``invwnn apply`` with only the forget set and a test split (default guard).

Cases (:data:`CASES`), each built per seed with its Retrain (the same recipe and seed without the
forget set): ``lenet-noisy``, a TorchScript :class:`LeNet` on Fashion-MNIST images of which
:data:`NOISE` carry a wrong label, forgetting those; ``lenet-random``, the same on clean labels,
forgetting a random :data:`FORGET_SHARE`; ``mobilenet-random``, an exported MobileNetV3-small
(:data:`MOBILENET`) on the images padded to 32x32 RGB, forgetting a random share. Each case also has
test and validation images (training images the model never saw).

Each row of :data:`invwnn.bench.rows.FORGET_ONLY` runs at its knob's default and, with ``tuned``, at
the value chosen per case on the validation split of seed :data:`TUNE_SEED` (:func:`choose`), which
then runs on every seed's test split. Finished runs go to the bench's log (``OUT/units.jsonl``),
built models under ``OUT/work``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.audit import metrics
from invwnn.bench import rows as bench_rows
from invwnn.bench.pool import map_units, read_log, run_logged
from invwnn.bench.report import mean_std, versions
from invwnn.files import write_files
from invwnn.errors import InputError
from trajgen import data as datasets

CASES = ("lenet-noisy", "lenet-random", "mobilenet-random")
TRAIN_SIZE = {"lenet-noisy": 3000, "lenet-random": 3000, "mobilenet-random": 2000}
TEST_SIZE = VAL_SIZE = 1000
FORGET_SHARE, NOISE = 0.1, 0.2  # random cases; lenet-noisy
MOBILENET = dict(width_mult=0.5, epochs=10, lr=1e-3, batch_size=64)
TUNE_SEED = 0


class LeNet(nn.Module):
    """LeNet-5 with BatchNorm after each convolution; input (N, 1, 28, 28) in [0, 1]."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                                  nn.ReLU(), nn.Linear(84, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def lenet_data(seed: int = 0, train_size: int = 2000, test_size: int = 1000, noise: float = 0.2,
               ds=None) -> dict:
    """The LeNet's data: ``train_size`` seeded Fashion-MNIST training images (``idx`` into the training
    split), uint8 ``x`` and labels ``y`` of which a seeded share ``noise`` carry a wrong label
    (``noisy`` mask), ``test_size`` seeded test images (``test_idx``), and the generator ``g`` in the
    state the training recipe continues from."""
    ds = ds if ds is not None else datasets.load("fashion-mnist")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.y_train), generator=g)[:train_size]
    x, y = ds.x_train[idx], ds.y_train[idx].clone()
    noisy = torch.zeros(len(y), dtype=torch.bool)
    noisy[torch.randperm(len(y), generator=g)[: round(noise * len(y))]] = True
    y[noisy] = (y[noisy] + torch.randint(1, 10, (int(noisy.sum()),), generator=g)) % 10  # always wrong
    test_idx = torch.randperm(len(ds.y_test), generator=g)[:test_size]
    return {"ds": ds, "idx": idx, "x": x, "y": y, "noisy": noisy, "test_idx": test_idx, "g": g}


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, epochs: int, lr: float,
         batch_size: int) -> nn.Module:
    """Adam ``lr``, ``epochs`` over uint8 images ``x`` in minibatches drawn from ``g`` (a last batch of
    one image is skipped: batch norm in training mode needs two)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xf = datasets.to_float(x)
    net.train()
    for _ in range(epochs):
        for b in torch.randperm(len(y), generator=g).split(batch_size):
            if len(b) > 1:
                opt.zero_grad()
                F.cross_entropy(net(xf[b]), y[b]).backward()
                opt.step()
    return net


def train_lenet(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, seed: int = 0, epochs: int = 12,
                lr: float = 2e-3, batch_size: int = 64) -> LeNet:
    """The LeNet's recipe, initialised from ``seed``; returned in eval mode."""
    torch.manual_seed(seed)
    return _fit(LeNet(), x, y, g, epochs, lr, batch_size).eval()


def train_mobilenet(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, seed: int) -> nn.Module:
    import torchvision
    torch.manual_seed(seed)
    c = MOBILENET
    net = _fit(torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=c["width_mult"]), x, y, g,
               c["epochs"], c["lr"], c["batch_size"])
    # torchvision's MobileNetV3 keeps batch-norm statistics with momentum 0.01: after a few hundred
    # steps they lag the weights (eval accuracy ~30%). Recompute them over the training images.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        for b in torch.arange(len(y)).split(250):
            net(datasets.to_float(x[b]))
    return net.eval()


def clone_generator(g: torch.Generator) -> torch.Generator:
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


def _rgb32(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def build(case: str, seed: int, work: Path, ds) -> dict:
    """Train the original and Retrain of ``case`` at ``seed``; write the original's file and the
    forget / test / val tensor files; return (and cache) the case's metadata and Retrain's figures."""
    folder = work / f"{case}-s{seed}"
    if (folder / "meta.json").exists():
        return json.loads((folder / "meta.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    d = lenet_data(seed, TRAIN_SIZE[case], TEST_SIZE, NOISE if case == "lenet-noisy" else 0.0, ds=ds)
    x, y, g = d["x"], d["y"], d["g"]
    forget = d["noisy"] if case == "lenet-noisy" else torch.zeros(len(y), dtype=torch.bool)
    if case != "lenet-noisy":
        forget[torch.randperm(len(y), generator=torch.Generator().manual_seed(20_000 + seed))
               [: round(FORGET_SHARE * len(y))]] = True
    free = torch.ones(len(ds.y_train), dtype=torch.bool)
    free[d["idx"]] = False  # validation: training images outside the model's pool
    pool = free.nonzero().squeeze(1)
    vi = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(10_000 + seed))[:VAL_SIZE]]
    xt, yt, xv, yv = ds.x_test[d["test_idx"]], ds.y_test[d["test_idx"]], ds.x_train[vi], ds.y_train[vi]
    mobile = case.startswith("mobilenet")
    if mobile:
        x, xt, xv = _rgb32(x), _rgb32(xt), _rgb32(xv)
    train = train_mobilenet if mobile else train_lenet
    g_retrain = clone_generator(g)
    original = train(x, y, g, seed)
    t1 = time.time()
    retrain = train(x[~forget], y[~forget], g_retrain, seed)
    t2 = time.time()
    if mobile:
        from torch.export import Dim, export
        model_path = folder / "model.pt2"
        torch.export.save(export(original, (datasets.to_float(x[:8]),), dynamic_shapes=({0: Dim("batch")},)),
                          str(model_path))
    else:
        model_path = folder / "model.pt"
        torch.jit.save(torch.jit.script(original), str(model_path))
    splits = {"forget": (x[forget], y[forget]), "test": (xt, yt), "val": (xv, yv)}
    for name, (xs, ys) in splits.items():
        torch.save({"x": xs, "y": ys}, folder / f"{name}.pt")
    acc = {}
    for who, net in (("original", original), ("retrain", retrain)):
        acc[who] = {name: metrics.accuracy(net, datasets.to_float(xs), ys) for name, (xs, ys) in splits.items()}
        acc[who]["retain"] = metrics.accuracy(net, datasets.to_float(x[~forget]), y[~forget])
    meta = {"case": case, "seed": seed, "model": f"{folder.name}/{model_path.name}",
            "n": {"train": len(y), "forget": int(forget.sum()), "test": len(yt), "val": len(yv)},
            "accuracy": acc, "train_seconds": {"original": t1 - t0, "retrain": t2 - t1},
            "shape": [int(s) for s in x.shape[1:]]}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def overrides(row: str, value: float | None) -> dict:
    """``invwnn apply``'s settings for ``row`` with its knob at ``value`` (None: its default): the row's
    fixed settings and its rewinder as a user gives them (``--rewinder``, ``--predictor``)."""
    spec = bench_rows.ROWS[row]
    out = dict(spec.fixed)
    if spec.rewinder is not None:
        out["rewinder"] = spec.rewinder[0]
        if spec.rewinder[1] is not None:
            out["predictor"] = spec.rewinder[1]  # a shipped checkpoint's short name
    if value is not None:
        out[bench_rows.FORGET_ONLY[row][0]] = value
    return out


def output_path(work: Path, meta: dict, row: str, value: float | None, split: str, seed: int) -> Path:
    """Where :func:`run_one` writes the unlearned model of that run."""
    return work / "out" / f"{meta['case']}-s{seed}-{row}-{value}-{split}{Path(meta['model']).suffix}"


def run_one(meta: dict, row: str, value: float | None, split: str, seed: int, work: Path) -> dict:
    """One forget-only run of ``row`` with its knob at ``value`` (None: the default), guarded by and
    measured on ``split`` (test or val)."""
    from invwnn.unlearn.apply import Inputs, unlearn
    folder = (work / meta["model"]).parent
    c, h, w = meta["shape"]
    inputs = Inputs(str(work / meta["model"]), str(folder / "forget.pt"), test=str(folder / f"{split}.pt"),
                    size=(h, w), channels=c)
    out = output_path(work, meta, row, value, split, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r = unlearn(inputs, bench_rows.ROWS[row].method, overrides(row, value), out=str(out), seed=seed)
    retrain_err = 100.0 - meta["accuracy"]["retrain"]["forget"]
    before, after = r["before"]["UA"], r["after"]["UA"]
    return {"case": meta["case"], "seed": seed, "row": row, "value": value, "split": split, "config": r["config"],
            "rewinder": r["rewinder"], "forget_err_before": before, "forget_err_after": after,
            "forget_err_retrain": retrain_err,
            "fraction": (after - before) / (retrain_err - before) if retrain_err != before else float("nan"),
            "acc_before": r["before"]["TA"], "acc_after": r["after"]["TA"], "drop": r["before"]["TA"] - r["after"]["TA"],
            "acc_retrain": meta["accuracy"]["retrain"][split], "stop_reason": r["stop_reason"], "guard": r["guard"],
            "seconds": r["seconds"], "wall_seconds": time.time() - t0, "iterations": r["iterations"]}


def choose(runs: list[dict], default: float) -> tuple[float, str]:
    """The knob value of the validation ``runs`` (one per value): the largest fraction moved (capped at
    1) among those losing at most 1 point of validation accuracy; ties -> the smaller value; none
    within 1 point -> ``default``."""
    ok = [r for r in runs if r["drop"] <= 1.0 and math.isfinite(r["fraction"])]
    if not ok:
        return default, "no value kept validation accuracy within 1 point: default kept"
    return max(ok, key=lambda r: (round(min(r["fraction"], 1.0), 3), -r["value"]))["value"], "chosen on validation"


def _m(values) -> float:
    return mean_std(list(values))[0]


def table(runs: list[dict], metas: dict) -> str:
    """The Markdown table: a line per case, row and setting (means over seeds), Retrain per case."""
    lines = ["| case | row | setting | forget error before -> after (Retrain) | fraction moved, mean [per seed] | "
             "test acc before -> after (drop in points) | stop_reason | seconds | target met |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["case"], r["row"], r["label"]), []).append(r)
    for (case, row, label), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        fr = [r["fraction"] for r in rs]
        met = sum(r["fraction"] >= 0.5 and r["drop"] <= 1.0 for r in rs)
        lines.append(
            f"| {case} | {row} | {label} | {_m(r['forget_err_before'] for r in rs):.1f} -> "
            f"{_m(r['forget_err_after'] for r in rs):.1f} ({_m(r['forget_err_retrain'] for r in rs):.1f}) | "
            f"{_m(fr):.2f} [{', '.join(f'{f:.2f}' for f in fr)}] | {_m(r['acc_before'] for r in rs):.1f} -> "
            f"{_m(r['acc_after'] for r in rs):.1f} ({_m(r['drop'] for r in rs):+.1f}) | "
            f"{', '.join(sorted({r['stop_reason'] for r in rs}))} | {_m(r['seconds'] for r in rs):.1f} | "
            f"{met} of {len(rs)} |")
    for case in dict.fromkeys(r["case"] for r in runs):
        ms = [m for (c, _), m in metas.items() if c == case]
        lines.append(f"| {case} | Retrain (reference) | | {_m(100 - m['accuracy']['retrain']['forget'] for m in ms):.1f} "
                     f"| 1 | {_m(m['accuracy']['retrain']['test'] for m in ms):.1f} | | "
                     f"{_m(m['train_seconds']['retrain'] for m in ms):.1f} (training) | |")
    return "\n".join(lines) + "\n"


def build_unit(args: tuple) -> dict:
    """:func:`build` of ``(case, seed, work folder)`` (pool worker)."""
    case, seed, work = args
    return build(case, seed, Path(work), datasets.load("fashion-mnist"))


def run_unit(args: tuple) -> dict:
    """:func:`run_one` of ``(meta, row, value, split, seed, work folder)`` (pool worker)."""
    *head, work = args
    return run_one(*head, Path(work))


def run_study(cases: tuple[str, ...], seeds: tuple[int, ...], rows: tuple[str, ...], settings: tuple[str, ...],
              out: str | Path, report_only: bool = False, jobs: int = 1, progress: bool = True,
              log=lambda s: None, state: str | Path | None = None) -> dict:
    """Every case x seed x row at its default (and with ``tuned`` in ``settings``, at the knob chosen
    on validation) over ``jobs`` processes, skipping runs already in the log ``state`` [OUT/units.jsonl];
    built models go under ``OUT/work``. Returns the results (``runs``, ``tuning``, ``cases_meta``, ``table``)."""
    bad = [c for c in cases if c not in CASES] + [r for r in rows if r not in bench_rows.FORGET_ONLY]
    if bad:
        raise InputError(f"unknown forget-only case or row {bad[0]!r}; cases: {', '.join(CASES)}; rows: "
                         f"{', '.join(bench_rows.FORGET_ONLY)}")
    work, state = Path(out) / "work", state or Path(out) / "units.jsonl"
    tuned = "tuned" in settings
    pairs = [(c, s) for c in cases for s in sorted({*seeds, *((TUNE_SEED,) if tuned else ())})]
    if report_only:
        metas = {(c, s): json.loads((work / f"{c}-s{s}" / "meta.json").read_text()) for c, s in pairs}
    else:
        metas = dict(zip(pairs, map_units(build_unit, [(c, s, str(work)) for c, s in pairs], jobs,
                                          "forget-only: originals + Retrain", progress)))

    def key(case: str, row: str, value: float | None, split: str, seed: int) -> str:
        return f"{case}/{seed}/{row}/{value}/{split}/{bench_rows.fingerprint(row, overrides(row, value))}"

    def run(todo: list[tuple]) -> dict[str, dict]:
        keyed = [(key(*t), (metas[(t[0], t[4])], *t[1:], str(work))) for t in todo]
        if not report_only:
            return run_logged(run_unit, keyed, state, jobs, "forget-only", progress, lambda r: log(
                f"{r['key']}: forget error {r['forget_err_before']:.1f} -> {r['forget_err_after']:.1f} (Retrain "
                f"{r['forget_err_retrain']:.1f}), acc {r['acc_before']:.1f} -> {r['acc_after']:.1f}, {r['stop_reason']}"))
        done = read_log(state)
        missing = [k for k, _ in keyed if k not in done]
        if missing:
            raise InputError(f"--report-only: run {missing[0]} is not in {state}")
        return {k: done[k] for k, _ in keyed}

    knobs = {row: (*bench_rows.FORGET_ONLY[row], getattr(bench_rows.config(row), bench_rows.FORGET_ONLY[row][0]))
             for row in rows}
    done = run([(c, r, None, "test", s) for c in cases for r in rows for s in seeds if "defaults" in settings]
               + [(c, r, v, "val", TUNE_SEED) for c in cases for r in rows for v in knobs[r][1] if tuned])
    tuning, chosen = {}, {}
    for case in cases if tuned else ():
        for row in rows:
            knob, grid, default = knobs[row]
            val = [done[key(case, row, v, "val", TUNE_SEED)] for v in grid]
            chosen[(case, row)], why = choose(val, default)
            tuning[f"{case}|{row}"] = {knob: chosen[(case, row)], "why": why, "tune_seed": TUNE_SEED, "validation": [
                {knob: r["value"], **{k: r[k] for k in ("fraction", "drop", "forget_err_after", "stop_reason")}}
                for r in val]}
    done.update(run([(c, r, v, "test", s) for (c, r), v in chosen.items() if v != knobs[r][2] for s in seeds]))
    runs = []
    for case in cases:
        for row in rows:
            knob, _, default = knobs[row]
            labels = [(None, f"{knob} {default:g} (default)")] if "defaults" in settings else []
            if chosen.get((case, row), default) != default:
                labels.append((chosen[(case, row)], f"{knob} {chosen[(case, row)]:g} (val, seed {TUNE_SEED})"))
            runs += [{**done[key(case, row, v, "test", s)], "label": label} for v, label in labels for s in seeds]
    return {"runs": runs, "tuning": tuning, "cases_meta": {f"{c}|{s}": m for (c, s), m in metas.items()},
            "table": table(runs, {k: m for k, m in metas.items() if k[1] in seeds})}


def write(results: dict, out: str | Path, command: str, doc: str | Path | None = None) -> list[Path]:
    """``OUT/table.md`` (the command that made it at its top), ``OUT/results.json`` and the same table
    as ``doc``; their paths."""
    md = f"# Forget data only, on models the project never trained\n\nCommand: `{command}`\n\n{results['table']}"
    record = {"command": command, **{k: v for k, v in results.items() if k != "table"}, "versions": versions()}
    return write_files({Path(out) / "table.md": md, Path(out) / "results.json": json.dumps(record, indent=1, default=str),
                        **({Path(doc): md} if doc is not None else {})})
