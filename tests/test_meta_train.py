"""`invwnn meta-train` on a store of counterfactual triples: triples rebuilt from the store (a
BatchNorm parent's function included), the gradient reaching the rewinder only on every family, the
settings drawn over invwnn+'s search ranges, a checkpoint recording objective, data and unroll,
and one-line errors."""
from __future__ import annotations

import random

import pytest
import torch
from click.testing import CliRunner

from invwnn.errors import InputError
from invwnn.rewind import meta
from invwnn.train import meta_loop, meta_train
from invwnn.bench import rows
from invwnn.cli.main import main
from trajgen import episode_spec, episodes


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parent rebuilt below must train as the store's did
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory, one_thread):
    """Six triples on the synthetic task: random (mlp, cnn, vit, convnext), random-large (mlp, cnn)."""
    path = tmp_path_factory.mktemp("cf") / "c.zarr"
    episodes.collect_episodes(episodes.EpisodeConfig(store=str(path), runs=6, parent_steps=12, dataset="synthetic",
                                                     workers=0, twins=True, counterfactuals=True, progress=False))
    return str(path)


def test_a_triple_is_the_parent_its_twin_and_the_images_the_loop_sees(store):
    triple = meta_train.load_triple(store, "twin-000001", retain_images=64, heldout_images=32)  # a cnn: BatchNorm
    spec = episode_spec.draw_counterfactual(0, 1, "synthetic", parent_steps=12)
    parent = episodes.parent_model(spec).eval()
    x = triple.heldout.x
    torch.testing.assert_close(triple.model(x), parent(x))  # weights and norm statistics
    assert len(triple.retain) == 64 and len(triple.heldout) == 32 and len(triple.forget) == spec.subset_size
    assert triple.counterfactual_buffers and not triple.model.training
    # the counterfactual is at distance 0 from itself; its weights under the parent's norm
    # statistics (which the loop keeps frozen) are not: the statistics are part of the target
    cf = {**triple.counterfactual, **triple.counterfactual_buffers}
    assert float(meta_loop.objective(triple, cf)) == pytest.approx(0.0, abs=1e-6)
    assert float(meta_loop.objective(triple, dict(triple.counterfactual))) > 1e-5
    assert float(meta_loop.objective(triple, {n: p.detach() for n, p in triple.model.named_parameters()})) > 0


@pytest.mark.parametrize("name", ["twin-000000", "twin-000001", "twin-000002", "twin-000003"])  # mlp, cnn, vit, convnext
def test_the_gradient_reaches_the_rewinder_and_nothing_else_on_every_family(store, name):
    triple = meta_train.load_triple(store, name, retain_images=32, heldout_images=16)
    rewinder = meta.MetaNet()
    settings = meta_train.draw_settings(random.Random(1))
    meta_loop.objective(triple, meta_loop.unroll(triple, rewinder, settings, torch.Generator().manual_seed(0))).backward()
    assert rewinder.correction[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in triple.model.parameters())


def test_settings_are_drawn_over_invwnn_plus_search_ranges():
    space = rows.ROWS["invwnn+"].space
    for name in ("lr", "repair_lr", "repair_steps", "batch_size"):
        got = meta_train.SETTINGS_SPACE[name]
        want = space[name]
        if name == "repair_steps":  # 0 adds the forget-only loop to the search's choices
            assert set(got[1]) - {0} <= set(want[1]) and 0 in got[1]
        else:
            assert got == want, name
    draws = [meta_train.draw_settings(random.Random(i)) for i in range(40)]
    assert all(3e-4 <= d.lr <= 5e-3 and d.repair_optimizer == "adam" for d in draws)
    assert {d.repair_steps for d in draws} == {0, 2, 4, 8}


@pytest.mark.slow  # about 45 s: a whole meta-train run
def test_meta_train_command_writes_a_checkpoint_that_records_what_it_was_trained_on(store, tmp_path):
    out = tmp_path / "m.pt"
    r = CliRunner().invoke(main, ["meta-train", "--store", store, "--out", str(out), "--steps", "4",
                                  "--eval-triples", "2", "--context", "layer", "--unrolled", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    rewinder, record = meta.load(out)
    assert rewinder.config.context == ("layer",) and list(record["config"]["context"]) == ["layer"]
    assert record["objective"] == meta_train.objective_text(2) and record["unroll"]["iterations"] == 2
    assert record["data"]["triples"] == {"train": 4, "heldout_parents": 1, "heldout_family": 1}
    assert "twin-000003" not in record["data"]["train_names"]  # convnext: the held-out family
    assert set(record["evaluation"]["heldout_family"]) >= {"meta", "line", "reset", "regression"}
    assert rewinder.config.horizon in meta_train.HORIZONS and out.stat().st_size < 100_000
    assert "objective" in r.output and "heldout_family" in r.output


def test_meta_train_refuses_a_store_without_triples_and_a_foreign_checkpoint(tmp_path):
    plain = tmp_path / "e.zarr"
    episodes.collect_episodes(episodes.EpisodeConfig(store=str(plain), runs=1, parent_steps=4, dataset="synthetic",
                                                     workers=0, progress=False))
    r = CliRunner().invoke(main, ["meta-train", "--store", str(plain), "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert r.exit_code != 0 and "no counterfactual triples" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(InputError, match="not a meta-trained rewinder"):
        meta.load(tmp_path / "x.pt")


def test_a_meta_checkpoint_unlearns_through_apply_and_at_initialisation_is_the_line(tmp_path_factory, tmp_path):
    """`--rewinder meta --predictor m.pt`: an untrained rewinder at horizon 3 writes exactly what
    `--rewinder linear --horizon 3` writes; its K must match --snapshots; a stretched horizon
    scales its rewind."""
    from dataclasses import asdict

    from _apply_fixtures import tiny_original
    from invwnn.unlearn.apply import Inputs, unlearn

    root = tiny_original(tmp_path_factory.getbasetemp())
    path = tmp_path / "m.pt"
    rewinder = meta.MetaNet(meta.MetaConfig(k=5, horizon=3.0))
    meta.save(rewinder, {"version": 1, "config": asdict(rewinder.config)}, path)
    inputs = Inputs(str(root / "model.pt"), str(root / "forget"), test=str(root / "test"))
    given = {"iterations": 2, "snapshots": 5, "horizon": 3.0, "lr": 1e-3}
    report = unlearn(inputs, "invwnn", {**given, "rewinder": "meta", "predictor": str(path)},
                     out=str(tmp_path / "meta.pt"), max_drop=None)
    unlearn(inputs, "invwnn", {**given, "rewinder": "linear"}, out=str(tmp_path / "line.pt"), max_drop=None)
    assert report["rewinder"]["rewinder"] == "meta" and report["rewinder"]["predictor"] == str(path)
    # with a layer context: the loop hands it each coordinate's layer, and untrained it is the line too
    context = meta.MetaNet(meta.MetaConfig(k=5, horizon=3.0, context=("layer",)))
    meta.save(context, {"version": 1, "config": asdict(context.config)},
                    tmp_path / "mc.pt")
    unlearn(inputs, "invwnn", {**given, "predictor": str(tmp_path / "mc.pt")}, out=str(tmp_path / "context.pt"),
            max_drop=None)  # --rewinder learned (the default) reads what the file holds
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("meta", "line", "context"))
    original = torch.load(root / "model.pt", weights_only=True)
    weights = [k for k, v in a["state_dict"].items() if v.is_floating_point()]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in weights)
    assert all(torch.allclose(c["state_dict"][k], b["state_dict"][k], atol=1e-6) for k in weights)
    assert any(not torch.equal(a["state_dict"][k], original["state_dict"][k]) for k in weights)
    with pytest.raises(InputError, match="window K = 5"):
        unlearn(inputs, "invwnn", {**given, "snapshots": 7, "rewinder": "meta", "predictor": str(path)},
                out=str(tmp_path / "x.pt"), max_drop=None)
    windows = torch.randn(100, 5).cumsum(1)
    stretched = meta.MetaRewinder(rewinder, str(path), 6.0).rewind(windows, None)
    torch.testing.assert_close(stretched - windows[:, 0], 2 * (rewinder.rewind(windows, None) - windows[:, 0]))


def test_the_shipped_meta_rewinder_loads_records_its_training_and_serves_a_bench_row():
    from invwnn.unlearn.methods import REGISTRY

    path = rows.predictor_file("invwnn+-meta", None)
    rewinder, record = meta.load(path)
    assert record["objective"] == meta_train.objective_text(record["unroll"]["iterations"]) and record["unroll"]["lead_iterations"].startswith("0..")
    assert record["data"]["triples"]["train"] > 0 and len(record["training"]["objective_history"]) == record["training"]["steps"]
    assert set(record["evaluation"]) == {"heldout_parents", "heldout_family"}
    shipped = sum(p.stat().st_size for p in path.parent.glob("*.pt"))
    assert shipped < 5 * 2**20  # every shipped predictor together
    assert rows.ROWS["invwnn+-meta"].rewinder == ("meta", "meta") and rows.ROWS["invwnn+-meta"].space
    loop_rewinder, desc = rows.make_rewinder("invwnn+-meta", REGISTRY["invwnn+"].config(), "cpu")
    assert desc["rewinder"] == "meta" and len(desc["sha256"]) == 64
    windows = torch.randn(50, rewinder.config.k).cumsum(1)
    assert torch.isfinite(loop_rewinder.rewind(windows, None)).all()
