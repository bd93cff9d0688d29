"""Run independent bench units (one method on one seed, one tuning trial) in worker processes.

Units are picklable argument tuples for a module-level function; results come back in the units'
order, whatever order they finish in. ``jobs=1`` runs in this process (what tests use). Workers
are spawned (no forked torch state) and use one torch thread each: on a machine with N cores,
N single-threaded units beat one N-threaded unit for models this small.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

from tqdm.auto import tqdm


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)
    # A parent killed by a signal runs no clean-up; without this its workers would finish their
    # units (hours of tuning) for nobody.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()
    os._exit(1)


def map_units(fn: Callable, units: Sequence[tuple], jobs: int = 1, desc: str = "", progress: bool = True,
              on_result: Callable[[int, object], None] | None = None) -> list:
    """``[fn(u) for u in units]``, over ``jobs`` processes when ``jobs > 1``; ``on_result(i,
    result)`` is called in this process as each unit finishes (to save progress)."""
    bar = tqdm(total=len(units), desc=desc, disable=not progress)
    if jobs <= 1 or len(units) <= 1:
        out = []
        for i, u in enumerate(units):
            out.append(fn(u))
            if on_result is not None:
                on_result(i, out[-1])
            bar.update(1)
        bar.close()
        return out
    results: list = [None] * len(units)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(units)), mp_context=ctx, initializer=_init_worker) as ex:
        futures = {ex.submit(fn, u): i for i, u in enumerate(units)}
        for f in as_completed(futures):
            i = futures[f]
            results[i] = f.result()
            if on_result is not None:
                on_result(i, results[i])
            bar.update(1)
    bar.close()
    return results
