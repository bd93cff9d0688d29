"""Load, at small scale: a store that already holds 20 runs, a collection adding 4 more, and the
library calls behind ``trajgen info`` and ``invwnn train`` polling it meanwhile.

The collection here trains in its own single process: a 2-worker dask cluster alone takes about
15 s to start on a 2-core machine. ``scripts/load_test.py`` runs the same drill with 2 dask workers
on 500 runs (figures in docs/guarantees.md); that 2 workers write what 1 does is
``tests/test_collect.py::test_two_workers_write_the_same_store_as_one``."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from invwnn.train.fit import TrainConfig, train
from trajgen.info import describe
from trajgen.store import complete_runs, run_names, open_store
from trajgen.verify import verify

SCRIPT = Path(__file__).parents[1] / "scripts" / "load_test.py"


def load_script():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a load drill, about 11 s
def test_info_and_train_see_only_complete_runs_while_a_collection_adds_to_a_full_store(tmp_path):
    drill = load_script()
    path = str(tmp_path / "s.zarr")
    drill.fill(path, 20)
    assert verify(path).ok and len(complete_runs(path)) == 20
    collect = subprocess.Popen([sys.executable, "-m", "trajgen.cli", "collect", "--store", path, "--runs", "24",
                                "--workers", "0", *drill.COLLECT_FLAGS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    config = TrainConfig(store=path, out=str(tmp_path / "p.pt"), k=2, u=1, steps=3, batch_size=256,
                         eval_per_kind=20, workers=0)
    seen, rounds, overlapped = [20], 0, 0
    while collect.poll() is None or not rounds:
        writing = len(run_names(open_store(path))) > len(complete_runs(path))  # a run is half-written now
        described = describe(path)["runs"]
        provenance = train(config, progress=False)["provenance"]
        complete = set(complete_runs(path))
        assert seen[-1] <= described <= provenance["runs"] <= len(complete)
        assert set(provenance["val_runs"]) <= complete
        seen += [described, provenance["runs"]]
        rounds += 1
        overlapped += writing
        time.sleep(0.1)  # leave the writer a core: two are all this machine may have
    assert collect.wait() == 0, collect.stderr.read()
    assert overlapped, "no reader round started while a run was being written"
    assert verify(path).ok and len(complete_runs(path)) == 24
