"""`invwnn train` and `invwnn inspect` as a user runs them, bad input included."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from trajgen.store import create_store
from invwnn.cli.main import main
from invwnn.rewind import SHIPPED, shipped_path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, text):
    assert result.exit_code == 2, result.output
    assert text in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_train_then_inspect(small_store, tmp_path):
    out = tmp_path / "ckpt" / "p.pt"
    r = run("train", "--store", small_store, "--out", out, "--steps", 20, "--batch-size", 512,
            "--workers", 0, "--width", 16, "--eval-per-kind", 100, "--quiet")
    assert r.exit_code == 0, r.output
    assert "no rewind" in r.output and "all" in r.output and "windows in" in r.output
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model_config"]["width"] == 16 and ckpt["train_config"]["steps"] == 20
    r = run("inspect", out)
    assert r.exit_code == 0 and "format 1" in r.output and "linear" in r.output and "windows_seen" in r.output
    r = run("inspect", out, "--json")
    assert r.exit_code == 0 and '"windows_seen": 10240' in r.output


def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(small_store, tmp_path):
    out = tmp_path / "p.pt"
    out.write_bytes(b"previous")
    empty = tmp_path / "empty.zarr"
    create_store(empty)
    one_line_error(run("train", "--store", empty, "--out", out, "--quiet"), "no complete runs")
    one_line_error(run("train", "--store", small_store, "--out", out, "--window", 64, "--quiet"), "shortest run")
    one_line_error(run("train", "--store", small_store, "--out", out, "--kinds", "conv,lstm", "--quiet"),
                   "unknown parameter kind 'lstm'")
    one_line_error(run("train", "--store", tmp_path / "nope.zarr", "--out", out, "--quiet"), "not a trajgen store")
    assert out.read_bytes() == b"previous"
    one_line_error(run("inspect", out), "not a readable checkpoint")
    one_line_error(run("inspect", tmp_path / "missing.pt"), "no such checkpoint")


@pytest.mark.parametrize("name", SHIPPED)
def test_inspect_reads_every_shipped_checkpoint(name):
    """Every file in invwnn/rewind/predictors/ (predictors and the meta rewinder) prints and dumps."""
    path = shipped_path(name)
    r = run("inspect", path)
    assert r.exit_code == 0 and str(path) in r.output.splitlines()[0], r.output
    assert ("invwnn-meta-rewinder" if name == "meta" else "format 1") in r.output
    r = run("inspect", path, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["state_dict"], r.output


def test_every_shipped_file_has_a_name():
    assert sorted(shipped_path(n).name for n in SHIPPED) == sorted(p.name for p in shipped_path("meta").parent.glob("*.pt"))
