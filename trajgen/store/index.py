"""The store's index: an append-only log of entries ``{"run": name, <summary>}`` (a complete run)
or ``{"run": name, "dropped": true}``, in pages of ``INDEX_PAGE`` entries (``index/p000000`` ...).

Appending rewrites the last page (at most ``INDEX_PAGE`` entries) and then the index group's
``count``, which commits: readers take the first ``count`` entries, so a kill between the two leaves
the old index. Adding a run writes a bounded number of bytes whatever the store holds; listing reads
``count / INDEX_PAGE`` small files (or objects). Only the collecting client writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr
from zarr.core.sync import collect_aiterator

from trajgen.store.location import open_store, stored_bytes, writing
from trajgen.store.schema import ARRAY_DTYPES, INDEX_PAGE, SUMMARY_KEYS, StoreError, schema_version


def _child_names(group: zarr.Group) -> list[str]:
    """Names of the members of ``group``, from one listing (no member's metadata is read)."""
    prefix = f"{group.path}/" if group.path else ""
    return [n for n in collect_aiterator(group.store.list_dir(prefix.rstrip("/"))) if n != "zarr.json"]


def run_names(root: zarr.Group) -> list[str]:
    """Names of all run groups present, complete or not, sorted (one listing of ``runs/``)."""
    if "runs" not in root:  # a store whose creation was cut short holds no runs yet
        return []
    return sorted(_child_names(root["runs"]))


def is_complete(root: zarr.Group, name: str) -> bool:
    try:
        return bool(root["runs"][name].attrs.get("complete", False))
    except (KeyError, ValueError, OSError):
        return False  # a group whose metadata a kill tore or never wrote


def _valid_summary(s: Any) -> bool:
    return isinstance(s, dict) and set(SUMMARY_KEYS) <= set(s)


def _malformed() -> StoreError:
    return StoreError("the store's index is not a mapping of run summaries; "
                      "`trajgen verify --repair` rebuilds it from the runs")


def _page_size(group: zarr.Group) -> tuple[int, int]:
    """(committed count, page size) of the index group, checked."""
    count, size = group.attrs.get("count"), group.attrs.get("page_size")
    if not (isinstance(count, int) and isinstance(size, int) and count >= 0 and size > 0):
        raise _malformed()
    return count, size


def _index_log(root: zarr.Group) -> list[dict[str, Any]]:
    """The committed entries, in order, of a version-2 store's index."""
    if "index" not in root:
        return []
    group = root["index"]
    count, size = _page_size(group)
    entries: list = []
    try:
        for k in range(-(-count // size)):
            page = group[f"p{k:06d}"].attrs.get("entries")
            if not isinstance(page, list):
                raise _malformed()
            entries += page
    except KeyError:
        raise _malformed() from None
    if len(entries) < count:
        raise _malformed()
    return entries[:count]


def index(root: zarr.Group) -> dict[str, dict[str, Any]]:
    """The index: summary of every complete run the collector has registered, by run name,
    sorted. Raises if it is malformed (``trajgen verify --repair`` rebuilds it)."""
    if schema_version(root) == 1:
        entries = root.attrs.get("index", {})
        if not (isinstance(entries, dict) and all(map(_valid_summary, entries.values()))):
            raise _malformed()
        return dict(sorted(entries.items()))
    out: dict[str, dict[str, Any]] = {}
    for entry in _index_log(root):
        if not (isinstance(entry, dict) and isinstance(entry.get("run"), str)):
            raise _malformed()
        if entry.get("dropped"):
            out.pop(entry["run"], None)
        elif _valid_summary(entry):
            out[entry["run"]] = {k: v for k, v in entry.items() if k != "run"}
        else:
            raise _malformed()
    return dict(sorted(out.items()))


def _index_head(root: zarr.Group) -> tuple[zarr.Group, int, int, list]:
    """(index group, committed count, page size, committed entries of the last page): what an
    append needs, read from two small files whatever the index holds."""
    group = root["index"]
    count, size = _page_size(group)
    last = f"p{count // size:06d}"
    page = group[last].attrs.get("entries") if count % size else []
    if not isinstance(page, list) or len(page) < count % size:
        raise _malformed()
    return group, count, size, page[: count % size]


def _append_index(root: zarr.Group, entries: list[dict[str, Any]]) -> None:
    """Append ``entries`` to the index log: the pages they fall in (the last one, and new ones
    when it fills), then the count, which commits them. Reads and writes O(len(entries) +
    INDEX_PAGE) entries, whatever the index holds."""
    if not entries:
        return
    hint = "; the runs are kept, rerun the same command to index them"
    with writing("the store's index", hint):
        if "index" not in root:
            root.create_group("index", attributes={"count": 0, "page_size": INDEX_PAGE})
        try:
            group, count, size, tail = _index_head(root)
        except (StoreError, KeyError):
            raise StoreError("the store's index is malformed; `trajgen verify --repair` rebuilds it "
                             "before anything is added") from None
        first = count // size
        new = tail + entries
        for k in range(-(-len(new) // size)):
            page, name = new[k * size: (k + 1) * size], f"p{first + k:06d}"
            if name in group:
                group[name].attrs["entries"] = page
            else:
                group.create_group(name, attributes={"entries": page})
        group.attrs["count"] = count + len(entries)


def add_to_index(root: zarr.Group, summaries: dict[str, dict[str, Any]]) -> None:
    """Register complete runs (name -> summary) in the index (single writer: the collecting
    client). Refuses a run whose group is not complete: the index never lists one."""
    for name in summaries:
        if not is_complete(root, name):
            raise StoreError(f"run {name} is not complete; the index lists complete runs only")
    _append_index(root, [{"run": name, **s} for name, s in summaries.items()])


def drop_from_index(root: zarr.Group, names: list[str]) -> None:
    """Remove runs from the index (before they are retrained, or when they are found damaged)."""
    _append_index(root, [{"run": name, "dropped": True} for name in names])


def set_index(root: zarr.Group, summaries: dict[str, dict[str, Any]]) -> None:
    """Make the index hold exactly ``summaries`` (run name -> summary): drop the other entries and
    append the new or changed ones, as one commit. A malformed index is started afresh."""
    try:
        current = index(root)
    except StoreError:
        with writing("the store's index"):
            del root["index"]
        current = {}
    entries = [{"run": n, "dropped": True} for n in sorted(set(current) - set(summaries))]
    entries += [{"run": n, **s} for n, s in sorted(summaries.items()) if current.get(n) != s]
    _append_index(root, entries)


def complete_runs(path: str | Path, include_diverged: bool = False) -> list[str]:
    """Runs a reader may use: in the index, skipping diverged runs unless asked. Safe to call
    while a collection is writing to the store; see :func:`complete_in`."""
    root = open_store(path)
    return complete_in(root, index(root), include_diverged)


def complete_in(root: zarr.Group, summaries: dict[str, dict[str, Any]], include_diverged: bool = False) -> list[str]:
    """The runs of ``summaries`` (the index of ``root``) a reader may use. A version-2 index lists
    complete runs only, so this reads nothing; in a version-1 store each run's flag is read."""
    runs = [name for name, s in summaries.items() if include_diverged or not s.get("diverged")]
    return runs if schema_version(root) > 1 else [n for n in runs if is_complete(root, n)]


def run_summary(group: zarr.Group) -> dict[str, Any]:
    """The index entry of a complete run group; ``bytes_stored`` is the run's size on disk. A
    sampled run's entry also holds ``n_params``, the size of the model it sampled from."""
    a = group.attrs
    spec = a["spec"]
    summary = {"arch": spec["arch"]["family"], "optimizer": spec["optim"]["name"],
               "n_coords": int(group["history"].shape[0]), "n_snapshots": int(group["history"].shape[1]),
               "final_test_acc": a.get("final_test_acc"), "diverged": bool(a.get("diverged", False)),
               "bytes_stored": stored_bytes(group, ARRAY_DTYPES)}
    if "coords" in group:
        summary["n_params"] = int(sum(layer["numel"] for layer in a["layers"]))
    return summary
