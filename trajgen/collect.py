"""Collection orchestration: plan the runs, skip what is done, train the rest on dask.distributed,
register finished runs in the root index. The client process is the index's only writer."""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from trajgen import data as datasets
from trajgen import nets, store
from trajgen.nets import layer_table, sample_coords
from trajgen.spec import ARCHS, OPTIMIZERS, RunSpec, SpecError, draw_run
from trajgen.train import accuracy, build_model, keep_freed_memory, snapshots


@dataclass(frozen=True)
class CollectConfig:
    """What ``trajgen collect`` does. ``workers=0`` trains in this process (no cluster).
    ``coords`` > 0: record a fixed sample of that many coordinates of each run instead of all
    (:func:`trajgen.nets.sample_coords`); ``width_mult``: the torchvision families' width
    multiplier (None: drawn per run); ``download``: let torchvision fetch a missing dataset;
    ``device``: where each run trains (``cuda``: one GPU shared by the workers)."""

    store: str = "data/traj.zarr"
    archs: tuple[str, ...] = ARCHS
    optimizers: tuple[str, ...] = OPTIMIZERS
    runs: int = 500
    seed: int = 0
    steps: int = 512
    every: int = 4
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    coords: int = 0
    width_mult: float | None = None
    download: bool = False
    device: str = "cpu"
    workers: int = 2
    threads_per_worker: int = 1
    scheduler: str | None = None
    progress: bool = field(default=True, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(config: CollectConfig) -> list[RunSpec]:
    """The specs of runs 0 .. runs-1: a pure function of the config."""
    if config.runs < 1:
        raise SpecError(f"--runs must be at least 1, got {config.runs}")
    return [draw_run(config.seed, i, config.archs, config.optimizers, config.steps, config.every,
                     config.dataset, config.coords, config.width_mult) for i in range(config.runs)]


@functools.lru_cache(maxsize=None)
def _activation_elements(arch, in_shape: tuple[int, ...], n_classes: int) -> int:
    """Elements the leaf modules of ``arch`` output for one example (a forward hook on each)."""
    model = nets.build(arch, in_shape, n_classes)
    elements = 0

    def count(module, inputs, output):
        nonlocal elements
        elements += output.numel() if isinstance(output, torch.Tensor) else 0

    hooks = [m.register_forward_hook(count) for m in model.modules() if not any(m.children())]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *in_shape))
    for h in hooks:
        h.remove()
    return elements


def expected_cost(spec: RunSpec, in_shape: tuple[int, ...], n_classes: int) -> float:
    """A run's relative training time, for starting the longest runs first so that no worker is
    left alone with a long run at the end: steps x (batch x activation elements of one example +
    650,000), the constant being a step's fixed cost in the same units (fitted on cnn and vit runs
    of the default collection on one CPU thread: about 4.6 ns per element and 3 ms per step)."""
    elements = _activation_elements(spec.arch, tuple(in_shape), n_classes)
    return spec.steps * (spec.batch_size * elements + 650_000)


def train_to_store(store_path: str, spec_dict: dict, data_root: str | None,
                   threads: int, device: str = "cpu") -> tuple[str, dict[str, Any]]:
    """Train one run and stream it into its own group. Runs on a worker; returns the index entry."""
    torch.set_num_threads(threads)  # dask pins OMP threads to 1; say what we want explicitly
    keep_freed_memory()
    spec = RunSpec.from_dict(spec_dict)
    data = datasets.load_cached(spec.dataset, data_root)
    model = build_model(spec, data).to(device)
    table = layer_table(model)
    coords = sample_coords(table, spec.coords, spec.seed) if spec.coords else None
    writer = store.RunWriter(store_path, spec, table, coords=coords)
    for snap in snapshots(spec, model, data, device=device):
        writer.append(snap.step, snap.weights, snap.loss, snap.acc)
    diverged = writer.n_written + writer.n_buffered < spec.n_snapshots
    test_acc = float("nan") if diverged else accuracy(model, data.x_test, data.y_test, device=device)
    return spec.name, writer.close(test_acc, diverged)


def resume(root, specs: list, recorded) -> list:
    """Prepare ``root`` for resuming: index the complete runs of ``specs`` missing from the index,
    drop the entries of runs no longer complete (``trajgen verify --repair`` found them damaged)
    before they are retrained; return the specs still to train. ``recorded(group)`` is the spec a
    complete group holds: one that differs from the plan means the flags changed, which is refused."""
    indexed = store.index(root)
    todo, unindexed, stale = [], {}, []
    for spec in specs:
        if not store.is_complete(root, spec.name):
            todo.append(spec)
            stale += [spec.name] if spec.name in indexed else []
            continue
        group = root["runs"][spec.name]
        if recorded(group) != spec:
            raise SpecError(f"the store already holds {spec.name} with a different spec; resume with "
                            "the flags that made it, or collect into another --store")
        if spec.name not in indexed:
            unindexed[spec.name] = store.run_summary(group)
    store.drop_from_index(root, stale)
    store.add_to_index(root, unindexed)
    return todo


def _orphans(dask_worker) -> int:
    """Collection tasks running on ``dask_worker`` (run there by ``client.run``)."""
    return sum(str(ts.key).startswith("trajgen-") for ts in dask_worker.state.executing)


def _wait_for_orphans(client, poll: float = 0.5) -> None:
    """Wait until no worker still runs a task of a previous client that was killed: dask forgets
    its tasks but cannot stop a running one, which would write the run group our own task for
    that run writes (a run is written by one task at a time)."""
    while any(client.run(_orphans).values()):
        time.sleep(poll)


@contextlib.contextmanager
def _client(workers: int, scheduler: str | None):
    """A dask client on ``scheduler``, or on a local cluster of ``workers`` processes, shut down on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            _wait_for_orphans(client)
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def execute(calls: list[tuple[str, Any, tuple]], workers: int, scheduler: str | None, done) -> None:
    """Run each ``(key, fn, args)`` of ``calls`` and hand the results to ``done`` as they finish, as
    a list: in this process when ``workers`` is 0 and there is no ``scheduler`` (one result at a
    time), else as dask tasks (the first calls first; a task lost with its worker is rerun, twice
    at most), every result finished meanwhile at once, so that the index is written once per batch
    however many workers finish together."""
    if not calls:
        return
    if workers == 0 and not scheduler:
        threads = torch.get_num_threads()  # the calls set their own
        try:
            for _, fn, args in calls:
                done([fn(*args)])
        finally:
            torch.set_num_threads(threads)
        return
    from distributed import as_completed

    with _client(workers, scheduler) as client:
        futures = [client.submit(fn, *args, key=key, retries=2, priority=len(calls) - rank)
                   for rank, (key, fn, args) in enumerate(calls)]
        for batch in as_completed(futures).batches():
            done([future.result() for future in batch])


def collect(config: CollectConfig) -> dict[str, Any]:
    """Make ``config.runs`` runs complete in ``config.store``; returns what was done. Everything
    that can be checked is checked before the store is touched."""
    loc = store.location(config.store)  # an unsupported URL fails before anything else
    if config.workers or config.scheduler:
        loc = store.shared_location(loc)
    specs = plan(config)
    data = datasets.load(config.dataset, config.data_root, config.download)  # a missing dataset fails before any write
    root = store.create_store(loc)  # an unreachable or missing object store fails here, writing nothing
    path = loc.for_workers
    todo = resume(root, specs, lambda group: RunSpec.from_dict(group.attrs["spec"]))
    started = time.perf_counter()
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run", desc="collect",
               disable=not config.progress)

    finished = 0

    def done(results: list[tuple[str, dict]]) -> None:
        nonlocal finished
        store.add_to_index(root, dict(results))
        finished += len(results)
        bar.update(len(results))
        bar.set_postfix(runs_per_hour=f"{finished * 3600 / (time.perf_counter() - started):.0f}")

    if config.workers or config.scheduler:  # longest first, so that no worker is left alone at the end
        todo = sorted(todo, key=lambda s: -expected_cost(s, data.in_shape, len(data.classes)))
    execute([(f"trajgen-{spec.name}", train_to_store, (path, spec.to_dict(), config.data_root,
                                                       config.threads_per_worker, config.device)) for spec in todo],
            config.workers, config.scheduler, done)
    bar.close()
    return {"store": str(loc), "planned": len(specs), "trained": len(todo),
            "skipped": len(specs) - len(todo), "seconds": time.perf_counter() - started}
