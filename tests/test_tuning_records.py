"""Merging a search of some methods into a scenario's tuning record (scripts/fair_bench.py --methods)."""
from __future__ import annotations

import pytest

from invwnn.bench import search
from invwnn.errors import InputError


def record(methods: dict, seed: int = 100, date: str = "2026-11-20") -> dict:
    return {"scenario": {"name": "random10"}, "seed": seed, "trials_per_method": 16, "data": {"train": "abc"},
            "spaces": {m: {"lr": ["log", 1, 2]} for m in methods}, "methods": methods, "date": date,
            "versions": {"torch": "x"}, "command": "first"}


def test_merge_replaces_the_searched_methods_keeps_the_rest_and_lists_the_update():
    old = record({"invwnn+": {"chosen": {"lr": 1}}, "finetune": {"chosen": {"lr": 2}}})
    new = {**record({"invwnn+": {"chosen": {"lr": 3, "horizon": 2.0}}}, date="2026-11-24"), "command": "second"}
    new["spaces"]["invwnn+"] = {"horizon": ["uniform", 0.5, 4.0]}
    merged = search.merge(old, new)
    assert merged["methods"]["invwnn+"]["chosen"] == {"lr": 3, "horizon": 2.0}
    assert merged["methods"]["finetune"] == old["methods"]["finetune"]
    assert merged["spaces"]["invwnn+"] == {"horizon": ["uniform", 0.5, 4.0]}
    assert merged["updates"] == [{"methods": ["invwnn+"], "date": "2026-11-24", "versions": {"torch": "x"},
                                  "command": "second"}]
    assert merged["command"] == "first" and old["methods"]["invwnn+"]["chosen"] == {"lr": 1}
    again = search.merge(merged, new)
    assert len(again["updates"]) == 2


def test_merge_refuses_a_search_of_another_seed():
    with pytest.raises(InputError, match="cannot merge"):
        search.merge(record({"a": {}}), record({"b": {}}, seed=101))


def test_a_search_merged_into_an_older_record_names_its_sampler_and_journal():
    old = {**record({"finetune": {"chosen": {"lr": 2}}}), "sampler": "library defaults, then seeded random draws"}
    new = {**record({"invwnn+": {"chosen": {"lr": 3}, "study": "random10/invwnn+/seed100/abc"}}),
           "sampler": search.sampler_text(100), "storage": "random10.optuna.log"}
    merged = search.merge(old, new)
    assert merged["sampler"] == old["sampler"] and "storage" not in merged  # the record's first search
    assert merged["updates"][-1]["sampler"] == new["sampler"] and merged["updates"][-1]["storage"] == "random10.optuna.log"
    assert merged["methods"]["invwnn+"]["study"] == "random10/invwnn+/seed100/abc"


def test_the_packaged_records_of_the_earlier_sampler_still_load():
    from invwnn.bench import scenarios
    for name in scenarios.TUNABLE:
        chosen, rec = search.load(name)
        assert rec["sampler"].startswith("library defaults, then seeded random draws"), name
        assert all(m["chosen"] == m["rows"][m["chosen_trial"]]["overrides"] for m in rec["methods"].values()
                   if m["chosen_trial"] is not None), name
