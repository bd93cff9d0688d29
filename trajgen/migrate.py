"""``trajgen migrate OLD NEW``: copy the complete runs of a store (version 1 or 2) into a
version-2 store, re-encoded with the current codecs and checksums, values bit for bit.

The old store is only read. Runs are copied one at a time and indexed as they complete, as
``collect`` does, so a killed migration leaves a valid store and the same command resumes it
(runs already complete in NEW are skipped). Memory: one ``(COORD_CHUNK, n_snapshots)`` slab.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trajgen import store


def copy_run(old_root, new_root, name: str) -> dict[str, Any]:
    """Copy complete run ``name`` of ``old_root`` into ``new_root``; returns its index summary."""
    run = store.open_run(old_root, name)
    attrs = dict(old_root["runs"][name].attrs)
    group = store.create_run_group(new_root["runs"], name, run.spec, run.layers, run.history.shape[1],
                                   coords=run.coords)
    extra = {k: v for k, v in attrs.items()
             if k not in ("spec", "layers", "complete", "final_test_acc", "diverged")}
    group.update_attributes(extra)  # versions of the writer that recorded the run, an episode's spec, ...
    block = group["history"].chunks[0]
    for c0 in range(0, run.history.shape[0], block):
        group["history"][c0: c0 + block] = run.history[c0: c0 + block]
    return store.finish_run_group(group, run.step, run.loss, run.acc, run.final_test_acc, run.diverged)


def migrate(old: str | Path, new: str | Path) -> dict[str, Any]:
    """Copy every complete run of ``old`` into ``new`` (created if absent); returns counts."""
    old_root = store.open_store(old)
    old_loc, new_loc = store.location(old), store.location(new)
    if (old_loc.target == new_loc.target if old_loc.path is None or new_loc.path is None
            else old_loc.path.resolve() == new_loc.path.resolve()):
        raise store.StoreError(f"migrate writes a new store: give NEW other than {old}")
    new_root = store.create_store(new)
    names = store.complete_runs(old, include_diverged=True)
    todo = [n for n in names if not store.is_complete(new_root, n)]
    done_before = set(store.index(new_root))
    unindexed = {n: store.run_summary(new_root["runs"][n]) for n in names
                 if n not in todo and n not in done_before}
    if unindexed:
        store.add_to_index(new_root, unindexed)
    for name in todo:
        with store.writing(f"run {name} to {new}", "; rerun the same command to resume"):
            summary = copy_run(old_root, new_root, name)
        store.add_to_index(new_root, {name: summary})
    return {"old": str(old), "new": str(new), "copied": len(todo), "skipped": len(names) - len(todo),
            "old_version": store.schema_version(old_root)}
