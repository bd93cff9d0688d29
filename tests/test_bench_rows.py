"""invwnn.bench.rows: every row runs a registered method with settings its config accepts, reads the
checkpoint it names (or the given predictor of its window), and is a new unit when its settings or
its predictor file change."""
from __future__ import annotations

from pathlib import Path

import pytest

from invwnn.bench import rows
from invwnn.errors import InputError
from invwnn.rewind import REWINDERS
from invwnn.rewind.predictor import default_checkpoint
from invwnn.unlearn.methods import REGISTRY


@pytest.mark.parametrize("name", sorted(rows.ROWS))
def test_every_row_runs_a_registered_method_with_settings_its_config_takes(name):
    row = rows.ROWS[name]
    config = rows.config(name, rows.defaults(name))  # a misspelt field or a bad value raises here
    assert all(getattr(config, k) == v for k, v in row.fixed.items())
    assert (row.rewinder is not None) == (row.method in ("invwnn", "invwnn+")), name
    if row.rewinder is not None:
        assert row.rewinder[0] in REWINDERS
        path = rows.predictor_file(name, config)
        assert (path is not None) == (row.rewinder[0] in ("learned", "meta")) and (path is None or path.is_file())
    assert name in (*rows.BENCH, *rows.PANEL, *rows.FORGET_ONLY), "a row on no list is never run"


def test_the_lists_and_a_row_list_given_by_name():
    assert rows.names("all") == list(rows.BENCH) and rows.names("all", rows.PANEL) == list(rows.PANEL)
    assert rows.names(" finetune, invwnn+-meta ") == ["finetune", "invwnn+-meta"]
    with pytest.raises(InputError, match="unknown method 'bogus'"):
        rows.names("finetune,bogus")
    assert set(rows.PANEL) >= set(REGISTRY) - {"retrain"}  # the panel runs every method a user can


def test_a_spaced_learned_row_has_its_control_line_in_the_same_loop():
    # the 500-run predictor's loop takes a snapshot every 4 steps; its line must run in that loop too
    assert rows.ROWS["invwnn+-runs500"].fixed["every"] == rows.ROWS["invwnn+-linear-every4"].fixed["every"]


def test_learned_rows_take_the_given_predictor_of_their_window(tmp_path):
    k15, k5 = rows.config("invwnn"), rows.config("invwnn+")
    assert (k15.snapshots, k5.snapshots) == (15, 5)
    files = (str(default_checkpoint(5)), str(default_checkpoint(15)))
    assert rows.predictor_file("invwnn", k15, files) == Path(files[1])
    assert rows.predictor_file("invwnn+", k5, files) == Path(files[0])
    assert rows.predictor_file("invwnn", k15, files[:1]) == default_checkpoint(15)  # none of K = 15 given
    assert rows.predictor_file("invwnn-linear", k15, files) is None
    assert rows.predictor_file("invwnn+-twins", k5, files).name != Path(files[0]).name  # a row's own file wins
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="--predictor"):
        rows.predictor_file("invwnn", k15, (str(junk),))


def test_the_fingerprint_follows_the_settings_and_the_predictor_file():
    base = rows.fingerprint("invwnn+", {"lr": 1e-3})
    assert base == rows.fingerprint("invwnn+", {"lr": 1e-3})
    assert base != rows.fingerprint("invwnn+", {"lr": 2e-3})
    given = (str(rows.predictor_file("invwnn+-episodes", rows.config("invwnn+"))),)  # a K = 5 predictor
    assert base != rows.fingerprint("invwnn+", {"lr": 1e-3}, given)
    other = rows.fingerprint("invwnn+-twins", {"lr": 1e-3})  # same settings, another predictor file
    assert other != base and rows.fingerprint("finetune", {"lr": 1e-3}) not in (base, other)


def test_a_row_makes_its_rewinder_and_records_the_file():
    rewinder, desc = rows.make_rewinder("invwnn+-episodes", rows.config("invwnn+-episodes"))
    assert rewinder.k == 5 and len(desc["sha256"]) == 64
    assert rows.make_rewinder("finetune", rows.config("finetune")) == (None, None)
