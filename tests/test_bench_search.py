"""invwnn.bench.search: the Optuna studies (the library defaults first, TPE seeded per trial, the same
number of trials for every row, resumable from a journal), `invwnn tune` writing a record and its
journal, and merging a search of some rows into a record. The study loop runs on a fake objective
(no bench); one test runs the real thing on a tiny quick scenario."""
from __future__ import annotations

import json
import math

import optuna
import pytest
from click.testing import CliRunner

from invwnn.bench import rows as bench_rows
from invwnn.bench import runner, scenarios, search
from invwnn.cli.bench import bench, tune
from invwnn.errors import InputError
from invwnn.unlearn.methods import REGISTRY


class Fake:
    """A stand-in for the bench: a smooth gap in log(lr) (or the first setting), reached above a
    threshold, an error on request; counts its calls."""

    def __init__(self, fail_on=(), interrupt_at=None):
        self.calls, self.fail_on, self.interrupt_at = [], set(fail_on), interrupt_at

    def __call__(self, overrides: dict) -> dict:
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # a kill mid-trial
        self.calls.append(overrides)
        if len(self.calls) - 1 in self.fail_on:
            return {"overrides": overrides, "error": "boom"}
        x = next((v for v in overrides.values() if isinstance(v, float)), None) or 1e-3
        g = abs(math.log10(x) + 2.0)
        return {"overrides": overrides, "reached": g < 0.5, "gap": g, "seconds": 1.0 + g}


def in_space(name: str, overrides: dict) -> bool:
    for k, (kind, *args) in bench_rows.ROWS[name].space.items():
        if k in bench_rows.ROWS[name].fixed:
            continue
        v = overrides[k]
        if not (v in args[0] if kind == "choice" else args[0] <= v <= args[1]):
            return False
    return True


def test_every_method_gets_the_same_search_with_its_defaults_first():
    for name in bench_rows.BENCH:
        fake = Fake()
        rows = search.search_method(name, search.TRIALS, search.TUNING_SEED, fake)
        assert len(rows) == len(fake.calls) == search.TRIALS, name
        row = bench_rows.ROWS[name]
        base = REGISTRY[row.method].config()  # the library's defaults, written out in trial 0
        assert rows[0]["overrides"] == {**{k: getattr(base, k) for k in row.space}, **row.fixed}, name
        assert rows[0]["overrides"] == bench_rows.defaults(name) and rows[0]["trial"] == 0
        assert all(r["overrides"].items() >= row.fixed.items() for r in rows), name  # fixed in every trial
        assert all(in_space(name, r["overrides"]) for r in rows[1:]), name
        assert len({json.dumps(r["overrides"], sort_keys=True) for r in rows}) > search.TRIALS // 2, name


def test_the_same_seed_draws_the_same_trials_and_another_seed_others():
    runs = [search.search_method("neggrad+", 8, seed, Fake()) for seed in (100, 100, 101)]
    assert runs[0] == runs[1]
    assert runs[0][0] == runs[2][0]  # the defaults
    assert [r["overrides"] for r in runs[0][1:]] != [r["overrides"] for r in runs[2][1:]]
    assert search.search_method("neggrad+", 5, 100, Fake()) == runs[0][:5]  # prefix-stable


def test_the_study_minimises_the_choice_rule_and_fails_the_errors(tmp_path):
    journal = tmp_path / "s.optuna.log"
    fake = Fake(fail_on={2, 5})
    rows = search.search_method("finetune", 8, 100, fake, journal, "finetune-study")
    study = optuna.load_study(study_name="finetune-study", storage=search._storage(journal))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 2 and len(study.trials) == 8
    for t, row in zip(study.trials, rows):
        assert t.user_attrs["row"] == {k: v for k, v in row.items() if k != "trial"}
        if "error" in row:
            assert t.state == optuna.trial.TrialState.FAIL and t.value is None
        else:
            assert t.value == pytest.approx(row["gap"] + (0 if row["reached"] else search.UNREACHED))
    best = search.choose(rows)
    ok = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert min(t.value for t in ok) == pytest.approx(search.objective_value(best))
    assert search.objective_value({"reached": True, "gap": 9.0}) < search.objective_value({"reached": False, "gap": 0.1})


def test_a_rerun_on_the_journal_resumes(tmp_path):
    journal = tmp_path / "random10.optuna.log"
    whole = search.search_method("salun", 6, 100, Fake())  # in memory, in one go
    first = Fake()
    assert search.search_method("salun", 3, 100, first, journal, "s") == whole[:3] and len(first.calls) == 3
    again = Fake()
    assert search.search_method("salun", 6, 100, again, journal, "s") == whole  # only the missing three ran
    assert again.calls == [r["overrides"] for r in whole[3:]]
    done = Fake()
    assert search.search_method("salun", 6, 100, done, journal, "s") == whole and done.calls == []
    # a run killed mid-trial: the trial is failed without a row, not counted, and its configuration reruns
    killed = Fake(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        search.search_method("salun", 6, 100, killed, tmp_path / "k.optuna.log", "s")
    after = Fake()
    rows = search.search_method("salun", 6, 100, after, tmp_path / "k.optuna.log", "s")
    assert [r["overrides"] for r in rows] == [r["overrides"] for r in whole] and len(after.calls) == 4
    assert [r["trial"] for r in rows] == [0, 1, 3, 4, 5, 6]  # trial 2 was the killed one
    # another study in the same journal is another method's, untouched
    assert search.search_method("neggrad", 2, 100, Fake(), journal, "n")[0]["overrides"] == bench_rows.defaults("neggrad")
    assert sorted(optuna.get_all_study_names(search._storage(journal))) == ["n", "s"]


def test_journal_sits_beside_the_record():
    assert search.journal_path("x/tuned/random10.json").as_posix() == "x/tuned/random10.optuna.log"
    assert search.journal_path(search.tuned_path("class")) == search.TUNED_DIR / "class.optuna.log"


def test_tune_writes_a_record_and_its_journal_and_a_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "tuned" / "random10.json"
    args = ["--scenario", "random10", "--quick", "--width", "4", "--methods", "neggrad,random-label", "--trials", "2",
            "--cache-dir", str(tmp_path / "cache"), "--tuned", str(out.parent), "--no-progress"]
    r = CliRunner().invoke(tune, [*args, "--out", str(tmp_path / "a")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    journal = tmp_path / "tuned" / "random10.optuna.log"
    assert journal.is_file() and str(journal) in r.output
    chosen, record = search.load("random10", out)
    assert set(chosen) == {"neggrad", "random-label"} and record["storage"] == "random10.optuna.log"
    assert "TPESampler" in record["sampler"] and optuna.__version__ in record["sampler"]
    # no machine paths in the record but the command as given
    assert str(tmp_path) not in json.dumps({k: v for k, v in json.loads(out.read_text()).items() if k != "command"})
    storage = search._storage(journal)
    for name, m in record["methods"].items():
        assert m["trials"] == len(m["rows"]) == 2 and m["rows"][0]["overrides"] == bench_rows.defaults(name)
        assert m["chosen"] == m["rows"][m["chosen_trial"]]["overrides"]
        for row in m["rows"]:
            assert {"overrides", "reached", "gap", "budget_gap", "seconds", "budget_seconds", "RA", "UA", "TA",
                    "MIA"} <= set(row) or "error" in row
        study = optuna.load_study(study_name=m["study"], storage=storage)
        assert [t.user_attrs["row"]["overrides"] for t in study.trials] == [row["overrides"] for row in m["rows"]]
    # a rerun finds every trial in the journal and runs none
    monkeypatch.setattr(search, "_trial", lambda args: pytest.fail("a finished trial ran again"))
    r2 = CliRunner().invoke(tune, [*args, "--out", str(tmp_path / "b")], catch_exceptions=False)
    assert r2.exit_code == 0, r2.output
    again = json.loads(out.read_text())
    assert {n: m["rows"] for n, m in again["methods"].items()} == {n: m["rows"] for n, m in record["methods"].items()}


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


def test_choice_prefers_reaching_then_gap():
    rows = [{"reached": False, "gap": 0.5, "seconds": 1.0, "overrides": {"a": 0}},
            {"reached": True, "gap": 3.0, "seconds": 9.0, "overrides": {"a": 1}},
            {"reached": True, "gap": 2.0, "seconds": 5.0, "overrides": {"a": 2}},
            {"error": "boom", "overrides": {"a": 3}}]
    assert search.choose(rows)["overrides"] == {"a": 2}
    assert search.choose(rows[:1])["overrides"] == {"a": 0}
    assert search.choose(rows[3:]) is None


def test_tuning_records_load_and_refuse_the_wrong_scenario(tmp_path):
    record = {"scenario": {"name": "class"}, "methods": {"salun": {"chosen": {"sparsity": 0.8}}}}
    (tmp_path / "class.json").write_text(json.dumps(record))
    chosen, rec = search.load("class", tmp_path)
    assert chosen == {"salun": {"sparsity": 0.8}} and rec["sha256"] and rec["path"].endswith("class.json")
    with pytest.raises(Exception, match="tuned on class, not random10"):
        search.load("random10", tmp_path / "class.json")
    (tmp_path / "bad.json").write_text("{}")
    r = CliRunner().invoke(bench, ["--scenario", "random10", "--tuned", str(tmp_path / "bad.json"),
                                   "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a tuning record" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    # every scenario with a validation split has a packaged record with the same number of trials
    # for every method; paper (no validation split) has none and runs on the library defaults
    assert search.load("paper") == ({}, None) and "paper" not in scenarios.TUNABLE
    for name in scenarios.TUNABLE:
        chosen, rec = search.load(name)
        # every benched row was searched (a record may also hold rows searched ahead of the bench)
        assert rec is not None and set(bench_rows.BENCH) <= set(chosen) <= set(bench_rows.ROWS), name
        assert {m["trials"] for m in rec["methods"].values()} == {rec["trials_per_method"]}, name
        assert rec["data"]["val"]["pool"] == "train" and "test" not in rec["data"], name


def test_tuning_measures_validation_images_only(tmp_path, monkeypatch):
    """Every split the search measures (its metrics and its stopping checks) is forget, retain or
    validation: the test split never reaches a measurement."""
    seen = []
    real_measure, real_subset = search.measure, runner.subset

    def spy_measure(model, forget, retain, test, *a, **k):
        seen.extend([forget.source, retain.source, test.source])
        return real_measure(model, forget, retain, test, *a, **k)

    def spy_subset(split, n, seed):
        seen.append(split.source)
        return real_subset(split, n, seed)

    monkeypatch.setattr(search, "measure", spy_measure)
    monkeypatch.setattr(runner, "measure", spy_measure)
    monkeypatch.setattr(runner, "subset", spy_subset)
    config = scenarios.scenario_config("random10", quick=True, train_size=300, val_size=100, test_size=100,
                                       epochs=1.0, width=4)
    record = search.tune({"random10": config}, ("neggrad", "invwnn+-reset"), trials=2, cache_dir=str(tmp_path),
                         progress=False)["random10"]
    assert set(seen) == {"forget", "retain", "val"}
    assert {m["trials"] for m in record["methods"].values()} == {2}
    assert record["data"]["val"]["n"] == 100 and "test" not in record["data"]
