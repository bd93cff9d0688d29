"""Load, at small scale: a store that already holds 20 runs, a collection adding 4 more, and the
library calls behind ``trajgen info`` and ``invwnn train`` polling it meanwhile.

The collection here trains in its own single process: a 2-worker dask cluster alone takes about
15 s to start on a 2-core machine. That 2 workers write what 1 does is
``tests/test_collect.py::test_two_workers_write_the_same_store_as_one``."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from invwnn.train.fit import TrainConfig, train
from trajgen import data as datasets
from trajgen import nets, store
from trajgen.collect import CollectConfig, plan
from trajgen.info import describe
from trajgen.store import complete_runs, open_store, run_names
from trajgen.train import build_model
from trajgen.verify import verify

# The smallest runs the spec allows: MLPs, 3 snapshots (steps 0, 1, 2).
COLLECT_FLAGS = ["--archs", "mlp", "--steps", "2", "--every", "1", "--quiet"]


def fill(path: str, n_runs: int) -> None:
    """Write the first ``n_runs`` runs of that collection through the collector's own writer, with
    the planned specs and their models' layer tables but synthetic weights (the initial weights
    plus a small random walk), and index them: a valid store in seconds instead of minutes."""
    store.create_store(path)
    data = datasets.load("fashion-mnist")
    rng = np.random.default_rng(0)
    summaries = {}
    for spec in plan(CollectConfig(store=path, runs=n_runs, archs=("mlp",), steps=2, every=1)):
        model = build_model(spec, data)
        writer = store.RunWriter(path, spec, nets.layer_table(model))
        w = nets.flat_weights(model).numpy()
        for j in range(spec.n_snapshots):
            writer.append(j * spec.every, w, loss=2.3 / (1 + j), acc=0.1 + 0.1 * j)
            w = w + rng.normal(0, 1e-3, w.shape).astype(np.float32)
        summaries[spec.name] = writer.close(final_test_acc=float(rng.uniform(0.6, 0.8)))
    store.add_to_index(store.open_store(path, "a"), summaries)


@pytest.mark.slow  # a load drill, about 11 s
def test_info_and_train_see_only_complete_runs_while_a_collection_adds_to_a_full_store(tmp_path):
    path = str(tmp_path / "s.zarr")
    fill(path, 20)
    assert verify(path).ok and len(complete_runs(path)) == 20
    collect = subprocess.Popen([sys.executable, "-m", "trajgen.cli", "collect", "--store", path, "--runs", "24",
                                "--workers", "0", *COLLECT_FLAGS],
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
