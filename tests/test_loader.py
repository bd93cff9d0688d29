"""trajgen.loader with a plain DataLoader and two worker processes: every window exactly once and
equal to the store's values, every run whole; no invwnn import. From s3://: tests/test_store_s3.py."""
import subprocess
import sys

import numpy as np
import pytest
from torch.utils.data import DataLoader

from trajgen import store
from trajgen.collect import CollectConfig, collect
from trajgen.loader import Runs, Windows


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("loader") / "s.zarr")
    collect(CollectConfig(store=path, workers=0, runs=3, steps=16, every=4, archs=("mlp", "cnn"), progress=False))
    return path


def test_windows_are_dealt_to_workers_once_each_and_hold_the_store_values(path):
    windows = Windows(path, length=3, stride=2)  # 5 snapshots: starts 0 and 2
    seen = {}
    for w in DataLoader(windows, batch_size=None, num_workers=2):
        key = (w["run"], w["c0"], w["t0"])
        assert key not in seen
        seen[key] = w
    assert len(seen) == 2 * len(windows.blocks) and {r for r, _, _ in seen} == set(store.complete_runs(path))
    for (name, c0, t0), w in seen.items():
        run = store.open_run(path, name)
        rows = w["weights"].shape[0]
        assert np.array_equal(w["weights"].numpy(), run.history[c0: c0 + rows, t0: t0 + 3])
        assert np.array_equal(w["step"].numpy(), run.step[t0: t0 + 3])
        assert np.array_equal(w["kind"].numpy(), run.kind[c0: c0 + rows])
    halves = [{(w["run"], w["c0"], w["t0"]) for w in Windows(path, 3, 2, shard=(r, 2))} for r in (0, 1)]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(seen)


def test_runs_load_whole_in_worker_processes(path):
    runs = Runs(path)
    loaded = {r["name"]: r for r in DataLoader(runs, batch_size=None, num_workers=2)}
    assert sorted(loaded) == runs.runs == store.complete_runs(path)
    for name, r in loaded.items():
        run = store.open_run(path, name)
        assert np.array_equal(r["history"].numpy(), run.history[:]) and r["spec"] == run.spec.to_dict()
        assert r["history"].shape == (len(run.kind), len(run.step)) == (r["pos"].shape[0], r["loss"].shape[0])


def test_the_loader_imports_nothing_from_invwnn():
    code = "import sys, trajgen.loader; print(sorted(m for m in sys.modules if m.split('.')[0] == 'invwnn'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
