"""Run independent bench units (one row on one seed, one row's search) in worker processes, and
keep the one resumable log of finished units every bench command uses.

Units are picklable argument tuples for a module-level function; results come back in the units'
order, whatever order they finish in. ``jobs=1`` runs in this process (what tests use). Workers
are spawned (no forked torch state) and use one torch thread each: on a machine with N cores,
N single-threaded units beat one N-threaded unit for models this small.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
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
    results: list = [None] * len(units)

    def finished(i: int, result) -> None:
        results[i] = result
        if on_result is not None:
            on_result(i, result)
        bar.update(1)
    if jobs <= 1 or len(units) <= 1:
        for i, u in enumerate(units):
            finished(i, fn(u))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(units)), mp_context=ctx, initializer=_init_worker) as ex:
            futures = {ex.submit(fn, u): i for i, u in enumerate(units)}
            for f in as_completed(futures):
                finished(futures[f], f.result())
    bar.close()
    return results


def read_log(path: str | Path) -> dict[str, dict]:
    """Key -> row of every finished unit in the JSONL log ``path`` (the last row of a key wins; a line
    cut by a kill is skipped). Rows are dicts with a ``key``."""
    out: dict[str, dict] = {}
    path = Path(path)
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        out[row["key"]] = row
    return out


def append_log(path: str | Path, row: dict) -> None:
    """Append ``row`` (a dict with a ``key``) as one line: a reader or a crash sees every earlier line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cut = False
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, 2)
            cut = f.read(1) != b"\n"
    with path.open("a") as f:
        f.write(("\n" if cut else "") + json.dumps(row, default=str) + "\n")  # a line cut by a kill stays apart
        f.flush()


def run_logged(fn: Callable, keyed: Sequence[tuple[str, tuple]], log: str | Path | None, jobs: int = 1, desc: str = "",
               progress: bool = True, on_row: Callable[[dict], None] = lambda row: None) -> dict[str, dict]:
    """Run ``fn`` on the units of ``keyed`` ((key, unit) pairs) whose key is not yet in ``log``, over
    ``jobs`` processes, appending ``{"key": key, **fn(unit)}`` as each finishes (and passing it to
    ``on_row``); returns key -> row of every unit of ``keyed``. A killed run resumes where it stopped.
    ``log`` None: no log, every unit runs."""
    done = read_log(log) if log is not None else {}
    todo = [(k, u) for k, u in keyed if k not in done]
    if progress and log is not None:
        print(f"{desc}: {len(keyed) - len(todo)} done, {len(todo)} to run", file=sys.stderr, flush=True)

    def save(i: int, result: dict) -> None:
        done[todo[i][0]] = {"key": todo[i][0], **result}
        if log is not None:
            append_log(log, done[todo[i][0]])
        on_row(done[todo[i][0]])
    map_units(fn, [u for _, u in todo], jobs, desc, progress, on_result=save)
    return {k: done[k] for k, _ in keyed}
