"""Issue 15's forget-only target, measured on models the project never trained.

    .venv/bin/python scripts/forget_only.py [--seeds 0,1,2] [--cases lenet-noisy,lenet-random,mobilenet-random]

Cases (each built per seed, with its Retrain: the same recipe and seed on the data minus the forget set):

- ``lenet-noisy``: the unseen TorchScript LeNet with BatchNorm of ``tests/_apply_fixtures.py``
  (Adam 2e-3, 12 epochs) on 3,000 Fashion-MNIST images of which 20% carry a wrong label; forget set =
  the mislabelled 600 with their wrong labels.
- ``lenet-random``: the same recipe on clean labels; forget set = a random 10% (300 images).
- ``mobilenet-random``: torchvision's MobileNetV3-small (width 0.5, Adam 1e-3, batch 64, 10 epochs,
  batch-norm statistics recomputed at the end) on 2,000 images padded to 32x32 and repeated to 3
  channels, saved with ``torch.export`` (dynamic batch); forget set = a random 10% (200 images).

Every case has a 1,000-image test split (Fashion-MNIST's test set) and a 1,000-image validation split
(Fashion-MNIST training images the model never saw). Each variant runs the forget-only command through
the library call ``invwnn apply`` makes (:func:`invwnn.unlearn.apply.unlearn`, only ``--forget`` and
``--test``, default guard): method ``invwnn`` with the shipped K = 15 predictor, ``--rewinder linear``,
the episode-trained and (when its file exists) the twin-trained K = 5 predictors with ``--snapshots
5``; and, beside them, the field's other forget-only methods: ``neggrad`` (gradient ascent),
``task-vector`` and ``boundary-shrink``. Each variant has one knob: the rewinders' horizon (grid
``--horizons``), neggrad's and boundary-shrink's learning rate, task-vector's alpha (five values each,
:data:`BASELINES`). It is chosen per variant and case on the *validation* split of ``--tune-seed``
(the run's ``--test`` is the validation file there, so the guard watches it too): the largest fraction
of the way to Retrain's forget error (capped at 1) among values that cost at most 1 point of
validation accuracy, the smallest value on ties; that value is then run on the test split of
every seed. The test split is never used to choose anything (but, as in the command, the guard
watches it: with only --forget and --test, ``invwnn apply`` bounds the loss on a 512-image subset of
the test split to 5 points and stops there).

The LeNet cases take ~5 s per unlearning run and ~20 s per training on one busy CPU thread; the
MobileNet case ~10-17 s per run and ~1.5-2.5 min per training. Run the cases in separate processes
to use two cores (``--cases lenet-noisy,lenet-random`` and ``--cases mobilenet-random``), then
``--report-only`` with all cases for the combined table.

Writes ``OUT/results.json`` (every run's report summary), ``OUT/table.md`` and prints the table.
Built models, data files and finished runs are cached under ``OUT/work`` and ``OUT/runs-CASE.json``,
so a rerun (or one with more seeds) redoes only what is missing.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _apply_fixtures import lenet_data, train_lenet  # noqa: E402
from invwnn.audit import metrics  # noqa: E402
from invwnn.unlearn.apply import Inputs, make_config, unlearn  # noqa: E402
from trajgen import data as datasets  # noqa: E402

CASES = ("lenet-noisy", "lenet-random", "mobilenet-random")
TRAIN_SIZE = {"lenet-noisy": 3000, "lenet-random": 3000, "mobilenet-random": 2000}
TEST_SIZE = VAL_SIZE = 1000
FORGET_SHARE = 0.1  # random cases
NOISE = 0.2  # lenet-noisy
MOBILENET = dict(width_mult=0.5, epochs=10, lr=1e-3, batch_size=64)

EPISODE = "invwnn/rewind/predictors/episode_predictor_k5.pt"
TWIN = "invwnn/rewind/predictors/twin_predictor_k5.pt"


# The other forget-only methods of the field (no --retain), each with its own one knob and a grid of
# five values around its default: the same budget as the rewinders' five horizons.
BASELINES = {"neggrad": ("lr", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)),
             "task-vector": ("alpha", (0.25, 0.5, 1.0, 2.0, 4.0)),
             "boundary-shrink": ("lr", (1e-6, 3e-6, 1e-5, 3e-5, 1e-4))}


def variants(horizons: list[float]) -> dict[str, dict]:
    """name -> unlearn() arguments (method, rewinder, predictor, overrides) and the one knob tuned on
    validation: its name, grid and default (the method's config default)."""
    rewind = dict(method="invwnn", knob="horizon", grid=horizons, default=3.0, overrides={})
    out = {"invwnn (default, K=15)": dict(rewind, rewinder="learned", predictor=None),
           "invwnn --rewinder linear": dict(rewind, rewinder="linear", predictor=None),
           "invwnn episode K=5": dict(rewind, rewinder="learned", predictor=str(ROOT / EPISODE),
                                      overrides={"snapshots": 5})}
    # invwnn+ on forget data only: its repair steps train on the forget images' shifted copies,
    # labelled by the model itself (invwnn.unlearn.methods.invwnn_plus.neighbours)
    plus = dict(method="invwnn+", knob="horizon", grid=horizons, default=3.0, overrides={})
    out["invwnn+ (neighbour repair)"] = dict(plus, rewinder="learned", predictor=None)
    out["invwnn+ (neighbour repair) --rewinder linear"] = dict(plus, rewinder="linear", predictor=None)
    if (ROOT / TWIN).exists():
        out["invwnn twin K=5"] = dict(rewind, rewinder="learned", predictor=str(ROOT / TWIN), overrides={"snapshots": 5})
    for method, (knob, grid) in BASELINES.items():
        default = getattr(make_config(method, {}), knob)
        out[method] = dict(method=method, knob=knob, grid=list(grid) if horizons else [], default=default,
                           overrides={}, rewinder="learned", predictor=None)
    return out


# --- cases ----------------------------------------------------------------------------------------

def _clone(g: torch.Generator) -> torch.Generator:
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


def _val_idx(ds, used: torch.Tensor, seed: int) -> torch.Tensor:
    """VAL_SIZE seeded training-split images outside ``used`` (the model's training pool)."""
    free = torch.ones(len(ds.y_train), dtype=torch.bool)
    free[used] = False
    pool = free.nonzero().squeeze(1)
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(10_000 + seed))[:VAL_SIZE]]


def _rgb32(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def train_mobilenet(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    c = MOBILENET
    net = torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=c["width_mult"])
    opt = torch.optim.Adam(net.parameters(), lr=c["lr"])
    xf = datasets.to_float(x)
    net.train()
    for _ in range(c["epochs"]):
        for b in torch.randperm(len(y), generator=g).split(c["batch_size"]):
            if len(b) < 2:  # batch norm in training mode needs two images
                continue
            opt.zero_grad()
            F.cross_entropy(net(xf[b]), y[b]).backward()
            opt.step()
    # torchvision's MobileNetV3 keeps batch-norm statistics with momentum 0.01: after a few hundred
    # steps they lag the weights (eval accuracy ~30%). Recompute them over the training images.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        for b in torch.arange(len(y)).split(250):
            net(xf[b])
    return net.eval()


def build(case: str, seed: int, work: Path, ds) -> dict:
    """Train the original and Retrain of ``case`` at ``seed``; write the original's file and the
    forget / test / val tensor files; return (and cache) the case's metadata and Retrain's figures."""
    folder = work / f"{case}-s{seed}"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    noise = NOISE if case == "lenet-noisy" else 0.0
    d = lenet_data(seed, TRAIN_SIZE[case], TEST_SIZE, noise, ds=ds)
    x, y, g = d["x"], d["y"], d["g"]
    if case == "lenet-noisy":
        forget = d["noisy"]
    else:
        forget = torch.zeros(len(y), dtype=torch.bool)
        forget[torch.randperm(len(y), generator=torch.Generator().manual_seed(20_000 + seed))
               [: round(FORGET_SHARE * len(y))]] = True
    xt, yt = ds.x_test[d["test_idx"]], ds.y_test[d["test_idx"]]
    vi = _val_idx(ds, d["idx"], seed)
    xv, yv = ds.x_train[vi], ds.y_train[vi]
    mobile = case.startswith("mobilenet")
    if mobile:
        x, xt, xv = _rgb32(x), _rgb32(xt), _rgb32(xv)
    train = train_mobilenet if mobile else train_lenet
    g_retrain = _clone(g)
    original = train(x, y, g, seed)
    t1 = time.time()
    retrain = train(x[~forget], y[~forget], g_retrain, seed)
    t2 = time.time()
    if mobile:
        from torch.export import Dim, export
        ep = export(original, (datasets.to_float(x[:8]),), dynamic_shapes=({0: Dim("batch")},))
        model_path = folder / "model.pt2"
        torch.export.save(ep, str(model_path))
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
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


# --- runs -----------------------------------------------------------------------------------------

def output_path(work: Path, meta: dict, variant: str, spec: dict, value: float | None, split: str,
                seed: int) -> Path:
    """Where :func:`run_one` writes the unlearned model of that run."""
    tag = f"{variant.replace(' ', '_').replace('=', '').replace('(', '').replace(')', '').replace(',', '')}"
    setting = f"h{value}" if spec["knob"] == "horizon" else f"{spec['knob']}{value}"
    return work / "out" / f"{meta['case']}-s{seed}-{tag}-{setting}-{split}{Path(meta['model']).suffix}"


def run_one(meta: dict, variant: str, spec: dict, value: float | None, split: str, seed: int,
            work: Path) -> dict:
    """One forget-only run of ``variant`` with its knob at ``value`` (None: the default), guarded by
    and measured on ``split`` (test or val)."""
    folder = (work / meta["model"]).parent  # model path: relative to ``work``
    c, h, w = meta["shape"]
    inputs = Inputs(str(work / meta["model"]), str(folder / "forget.pt"), test=str(folder / f"{split}.pt"),
                    size=(h, w), channels=c)
    overrides = dict(spec["overrides"])
    if value is not None:
        overrides[spec["knob"]] = value
    out = output_path(work, meta, variant, spec, value, split, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r = unlearn(inputs, spec["method"], overrides, out=str(out), rewinder=spec["rewinder"],
                predictor=spec["predictor"], seed=seed)
    wall = time.time() - t0
    retrain_err = 100.0 - meta["accuracy"]["retrain"]["forget"]
    before, after = r["before"]["UA"], r["after"]["UA"]
    frac = (after - before) / (retrain_err - before) if retrain_err != before else float("nan")
    return {"case": meta["case"], "seed": seed, "variant": variant, "value": value,
            "split": split, "config": r["config"], "rewinder": r["rewinder"],
            "forget_err_before": before, "forget_err_after": after, "forget_err_retrain": retrain_err,
            "fraction": frac, "acc_before": r["before"]["TA"], "acc_after": r["after"]["TA"],
            "drop": r["before"]["TA"] - r["after"]["TA"],
            "acc_retrain": meta["accuracy"]["retrain"][split], "stop_reason": r["stop_reason"],
            "guard": r["guard"], "seconds": r["seconds"], "wall_seconds": wall,
            "iterations": r["iterations"]}


def key(case, seed, variant, value, split) -> str:
    return f"{case}|{seed}|{variant}|{value}|{split}"


def choose(rows: list[dict], default: float) -> tuple[float, str]:
    """The knob value (``value`` key) of the validation runs ``rows`` (one per value): the largest
    fraction moved (capped at 1) among those losing at most 1 point of validation accuracy; ties ->
    the smaller value; none within 1 point -> ``default``."""
    ok = [r for r in rows if r["drop"] <= 1.0 and math.isfinite(r["fraction"])]
    if not ok:
        return default, "no value kept validation accuracy within 1 point: default kept"
    best = max(ok, key=lambda r: (round(min(r["fraction"], 1.0), 3), -r["value"]))
    return best["value"], "chosen on validation"


# --- report ---------------------------------------------------------------------------------------

def _mean(v):
    v = [x for x in v if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else float("nan")


def table(rows: list[dict], metas: dict, seeds: list[int]) -> str:
    head = ("| case | variant | setting | forget error before -> after (Retrain) | fraction moved, mean "
            "[per seed] | test acc before -> after (drop in points) | stop_reason | seconds | target met |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["variant"], r["label"]), []).append(r)
    for (case, variant, label), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        fr = [r["fraction"] for r in rs]
        met = sum(r["fraction"] >= 0.5 and r["drop"] <= 1.0 for r in rs)
        stops = ", ".join(sorted({r["stop_reason"] for r in rs}))
        lines.append(
            f"| {case} | {variant} | {label} | {_mean([r['forget_err_before'] for r in rs]):.1f} -> "
            f"{_mean([r['forget_err_after'] for r in rs]):.1f} ({_mean([r['forget_err_retrain'] for r in rs]):.1f}) | "
            f"{_mean(fr):.2f} [{', '.join(f'{f:.2f}' for f in fr)}] | "
            f"{_mean([r['acc_before'] for r in rs]):.1f} -> {_mean([r['acc_after'] for r in rs]):.1f} "
            f"({_mean([r['drop'] for r in rs]):+.1f}) | {stops} | {_mean([r['seconds'] for r in rs]):.1f} | "
            f"{met} of {len(rs)} |")
    for case in dict.fromkeys(r["case"] for r in rows):
        ms = [metas[(case, s)] for s in seeds if (case, s) in metas]
        lines.append(f"| {case} | Retrain (reference) | | {_mean([100 - m['accuracy']['retrain']['forget'] for m in ms]):.1f} | 1 | "
                     f"{_mean([m['accuracy']['retrain']['test'] for m in ms]):.1f} | | "
                     f"{_mean([m['train_seconds']['retrain'] for m in ms]):.1f} (training) | |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--horizons", default="1.5,3,6,12,24", help="grid tried on the validation split; '' skips tuning")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--variants", default="all", help="semicolon list of variant names (the table's rows), or all")
    ap.add_argument("--out", default=str(ROOT / "data" / "forget_only"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table from cached runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [c for c in args.cases.split(",") if c]
    horizons = [float(h) for h in args.horizons.split(",") if h]
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    cache: dict[str, dict] = {}  # run key -> summary; one file per case, so cases can run in parallel
    for f in out.glob("runs-*.json"):
        cache.update(json.loads(f.read_text()))

    def save_cache(case: str) -> None:
        path = out / f"runs-{case}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in cache.items() if k.startswith(case + "|")}, indent=1))
        tmp.replace(path)

    def get(meta, variant, spec, value, split, seed) -> dict:
        k = key(meta["case"], seed, variant, value, split)
        if k not in cache:
            if args.report_only:
                raise SystemExit(f"missing run {k}")
            r = run_one(meta, variant, spec, value, split, seed, work)
            cache[k] = r
            save_cache(meta["case"])
            print(f"  {k}: forget error {r['forget_err_before']:.1f} -> {r['forget_err_after']:.1f} "
                  f"(Retrain {r['forget_err_retrain']:.1f}, fraction {r['fraction']:.2f}), {split} acc "
                  f"{r['acc_before']:.1f} -> {r['acc_after']:.1f}, {r['stop_reason']}, {r['seconds']:.1f} s",
                  flush=True)
        return cache[k]

    ds = None if args.report_only else datasets.load("fashion-mnist")
    metas, rows, tuning = {}, [], {}
    for case in cases:
        for seed in seeds:
            if args.report_only:
                metas[(case, seed)] = json.loads((work / f"{case}-s{seed}" / "meta.json").read_text())
            else:
                metas[(case, seed)] = build(case, seed, work, ds)
            m = metas[(case, seed)]
            print(f"{case} seed {seed}: original test {m['accuracy']['original']['test']:.1f}, forget "
                  f"{m['accuracy']['original']['forget']:.1f}; Retrain test {m['accuracy']['retrain']['test']:.1f}, "
                  f"forget {m['accuracy']['retrain']['forget']:.1f} (trained in {m['train_seconds']['original']:.0f} + "
                  f"{m['train_seconds']['retrain']:.0f} s)", flush=True)
        chosen = variants(horizons)
        if args.variants != "all":
            names = [v.strip() for v in args.variants.split(";")]
            unknown = [n for n in names if n not in chosen]
            if unknown:
                raise SystemExit(f"unknown variant {unknown[0]!r}; valid: {', '.join(chosen)}")
            chosen = {n: chosen[n] for n in names}
        for variant, spec in chosen.items():
            knob, default = spec["knob"], spec["default"]
            for seed in seeds:
                r = get(metas[(case, seed)], variant, spec, None, "test", seed)
                rows.append({**r, "label": f"{knob} {default:g} (default)"})
            if not spec["grid"]:
                continue
            val = [{**get(metas[(case, args.tune_seed)], variant, spec, v, "val", args.tune_seed), "value": v}
                   for v in spec["grid"]]
            v, why = choose(val, default)
            tuning[f"{case}|{variant}"] = {knob: v, "why": why, "tune_seed": args.tune_seed,
                                           "validation": [{knob: r["value"], **{k: r[k] for k in (
                                               "fraction", "drop", "forget_err_after", "stop_reason")}}
                                                          for r in val]}
            print(f"  {case} {variant}: {knob} {v:g} ({why}); validation "
                  + ", ".join(f"{x['value']:g}: {x['fraction']:.2f}/{x['drop']:+.1f}" for x in val), flush=True)
            if v == default:
                continue
            for seed in seeds:
                r = get(metas[(case, seed)], variant, spec, v, "test", seed)
                rows.append({**r, "label": f"{knob} {v:g} (val, seed {args.tune_seed})"})
    md = table(rows, metas, seeds)
    print(md)
    (out / "table.md").write_text(md)
    (out / "results.json").write_text(json.dumps({
        "command": "python scripts/forget_only.py " + " ".join(sys.argv[1:]), "seeds": seeds, "cases": cases,
        "horizons": horizons, "tuning": tuning, "threads": args.threads, "machine": platform.platform(),
        "cases_meta": {f"{c}|{s}": m for (c, s), m in metas.items()}, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
