"""The trajectory store's schema, in one place.

Layout (Zarr v3, one directory; schema version 2)::

    traj.zarr/                      attrs: kind="trajgen-store", schema_version=2
      index/                        attrs: count (committed entries), page_size
        p000000/                    attrs: entries (log entries page_size * k ... page_size * (k + 1) - 1)
      runs/<run-000042>/            attrs: spec, layers, versions, complete, diverged, final_test_acc
        history  (n_coords, n_snapshots) float32, chunks (COORD_CHUNK, time_chunk_for(n_snapshots))
        kind     (n_coords,)  uint8   code of the parameter kind (trajgen.nets.KINDS)
        layer    (n_coords,)  uint16  row of the layer table the coordinate belongs to
        pos      (n_coords,)  int32   flat position inside that layer's tensor
        step     (n_snapshots,) int64    optimizer steps taken when the snapshot was recorded
        loss     (n_snapshots,) float32  mean training loss since the previous snapshot
        acc      (n_snapshots,) float32  mean training accuracy since the previous snapshot
        coords   (n_coords,)  int64   sampled runs only (``spec.coords`` > 0): each row's position
                                      in the model's flat weight vector (trajgen.nets.flat_weights),
                                      strictly increasing; kind/layer/pos describe those rows

Every chunk of every array ends in a CRC32C checksum (zarr's ``crc32c`` codec, last in the chain):
``history`` is PCodec level 8 (lossless; chosen with ``scripts/bench_compression.py``), the other
arrays Blosc zstd. A damaged chunk fails its checksum when read; readers turn that into a
one-line :class:`StoreError` naming the run.

The index is an append-only log of entries ``{"run": name, <summary>}`` (a complete run) or
``{"run": name, "dropped": true}``, in pages of ``INDEX_PAGE`` entries. Appending rewrites the last
page (at most ``INDEX_PAGE`` entries) and then the index group's ``count``, which commits: readers
take the first ``count`` entries, so a kill between the two leaves the old index. Adding a run
writes a bounded number of bytes whatever the store holds; listing reads ``count / INDEX_PAGE``
small files.

A run group is written only by the task that trains it, and marked ``complete`` only after its last
write; the index is written only by the collecting client, which indexes a run only once it is
complete and drops an entry before its run is retrained. Zarr's local store replaces files by
rename, so a kill leaves every file either old or new. A store is given as a path or a ``file://``
URL, written as that local path (:func:`location`); ``memory://`` works in one process only, and
every other scheme is refused: the writers are dask workers that must all reach the store. Version-1 stores (Blosc without checksums,
the whole index in one root attribute) are read as before and never written to: ``trajgen migrate``
copies one into a version-2 store.
"""
from __future__ import annotations

import contextlib
import platform
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.codecs.numcodecs import PCodec
from zarr.core.sync import collect_aiterator

from trajgen.nets import KINDS, Layer
from trajgen.spec import RunSpec

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
STORE_KIND = "trajgen-store"
# History's time chunks: the fewest chunks of at most MAX_TIME_CHUNK snapshots, of equal length
# (time_chunk_for; 129 snapshots -> 65 + 64), so that no run ends in a chunk of a snapshot or two,
# whose values cannot be delta-coded (docs/store.md). Schema-2 stores written before used
# TIME_CHUNK = 64 whatever the run's length; the chunk shape is each array's metadata, so both read.
TIME_CHUNK = 64
MAX_TIME_CHUNK = 128
COORD_CHUNK = 16384
INDEX_PAGE = 128
# The arrays of a run group and their dtypes (the schema above); history is 2-D, the others 1-D.
ARRAY_DTYPES = {"history": np.float32, "kind": np.uint8, "layer": np.uint16, "pos": np.int32,
                "step": np.int64, "loss": np.float32, "acc": np.float32}
# Arrays only some runs hold: a twin episode's counterfactual weights (n_coords,) (trajgen.twins);
# a sampled run's coordinate positions (n_coords,) (trajgen.nets.sample_coords).
OPTIONAL_DTYPES = {"counterfactual": np.float32, "coords": np.int64, "parent_buffers": np.float32,
                   "counterfactual_buffers": np.float32}
SUMMARY_KEYS = ("arch", "optimizer", "n_coords", "n_snapshots", "final_test_acc", "diverged")
# zarr warns, on every read of an array's metadata, that numcodecs' PCodec is not in the Zarr v3
# specification; the store says so above, once, and readers need not repeat it.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")


class StoreError(RuntimeError):
    """A store that cannot be created, opened or read as a trajgen store."""


class NoStore(StoreError):
    """Nothing (no root ``zarr.json``) where a store was expected."""


def versions() -> dict[str, str]:
    import numcodecs
    import pcodec
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__, "pcodec": pcodec.__version__, "numpy": np.__version__}


def balanced_time_chunk(n_snapshots: int, most: int) -> int:
    """The time chunk that cuts ``n_snapshots`` into the fewest chunks of at most ``most``
    snapshots, all of the same length but the last (129 -> 65 + 64 for ``most`` = 128)."""
    n_chunks = -(-max(1, n_snapshots) // most)
    return -(-max(1, n_snapshots) // n_chunks)


def time_chunk_for(n_snapshots: int) -> int:
    """The time chunk of a run of ``n_snapshots`` snapshots (see ``MAX_TIME_CHUNK``)."""
    return balanced_time_chunk(n_snapshots, MAX_TIME_CHUNK)


def history_codecs() -> dict[str, Any]:
    """``create_array`` keywords of ``history``: PCodec level 8 in classic mode (1.76x on a real
    collection with :func:`time_chunk_for`'s chunks, against 1.54x for schema 1's Blosc; nothing
    lossless tried reaches 2x: docs/store.md), then the chunk's CRC32C."""
    return {"serializer": PCodec(level=8, mode_spec="classic"), "compressors": [Crc32cCodec()]}


def small_codecs() -> dict[str, Any]:
    """``create_array`` keywords of every other array: Blosc zstd-3 with bit-shuffle, then CRC32C."""
    return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()]}


def schema_version(root: zarr.Group) -> int:
    return root.attrs["schema_version"]


@dataclass(frozen=True)
class Location:
    """Where a store lives: ``path``, a local path (given as a path or a ``file://`` URL), or
    ``url``, a ``memory://`` URL (zarr's in-process memory store: this process only)."""

    text: str
    path: Path | None = None
    url: str | None = None

    @property
    def target(self) -> str:
        """What zarr is given: the local path (zarr's local store, whose writes replace files by
        rename) or the memory URL."""
        return str(self.path) if self.path is not None else self.url

    @property
    def shared(self) -> bool:
        """Whether other processes (dask workers) can reach the store: true of a path."""
        return self.path is not None

    def __str__(self) -> str:
        return self.text


# What a store given as a URL other than file:// or memory:// is told.
NEEDED = ("a store every worker can reach: a path or file:// URL on a file system mounted at the same "
          "place on every machine (a shared file system such as NFS)")


def location(store: str | Path | Location) -> Location:
    """Parse ``--store``: a local path, a ``file://`` URL (``file:///abs/path``; read and written as
    that local path) or a ``memory://`` URL (one process only). Any other URL scheme raises a
    one-line :class:`StoreError`: the store's guarantees (a file replaced by rename is old or new,
    never torn) are those of a file system, and its writers are dask workers that must all reach it."""
    if isinstance(store, Location):
        return store
    if isinstance(store, Path) or "://" not in str(store):
        return Location(str(Path(store)), path=Path(store))
    text = str(store)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"{text}: a file:// URL of another host ({parts.netloc}); give {NEEDED}")
        if not parts.path:
            raise StoreError(f"{text}: a file:// URL without a path (file:///abs/path)")
        return Location(text, path=Path(unquote(parts.path)))
    if scheme == "memory":
        return Location(text, url=text)
    raise StoreError(f"{text}: {scheme}:// stores are not supported; give {NEEDED}")


def shared_location(store: str | Path | Location, in_process: str = " (or train in this process: --workers 0)"
                    ) -> Location:
    """:func:`location`, refusing a store that dask workers (other processes) cannot reach;
    ``in_process`` ends the message (what else the user can do)."""
    loc = location(store)
    if not loc.shared:
        raise StoreError(f"{loc}: a memory:// store lives in one process and dask workers cannot reach "
                         f"it; give {NEEDED}{in_process}")
    return loc


def _check_root(root: zarr.Group, path: Location, mode: str) -> zarr.Group:
    kind = root.attrs.get("kind")
    if kind != STORE_KIND:
        raise StoreError(f"{path} is a Zarr group but not a trajgen store")
    version = root.attrs.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"{path} has schema version {version}; this trajgen reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))} (collect into a new --store)")
    if mode != "r" and version != SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}, which this trajgen reads but does not "
                         f"write; `trajgen migrate {path} NEW` copies it into a version-{SCHEMA_VERSION} store")
    return root


def open_store(path: str | Path | Location, mode: str = "r") -> zarr.Group:
    """Open an existing store for reading (``mode='r'``, versions 1 and 2) or appending (``'a'``,
    version 2 only). ``path``: see :func:`location`."""
    loc = location(path)
    if loc.path is not None and not (loc.path / "zarr.json").is_file():
        raise NoStore(f"{loc} is not a trajgen store (no zarr.json)")
    try:
        if loc.path is None:  # mode "a" would create an empty group where there is none
            zarr.open_group(loc.target, mode="r")
        root = zarr.open_group(loc.target, mode=mode)
    except FileNotFoundError:  # zarr's GroupNotFoundError: a memory:// URL holding nothing
        raise NoStore(f"{loc} is not a trajgen store (no zarr.json)") from None
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise StoreError(f"cannot open {loc}: {err}") from err
    return _check_root(root, loc, mode)


@contextlib.contextmanager
def writing(what: str, hint: str = ""):
    """Turn a failed write (disk full, read-only file system, quota, permissions) into a one-line
    StoreError naming ``what``. Zarr writes each file to a temporary name and renames it, so the
    file being written keeps its old content."""
    try:
        yield
    except OSError as err:
        raise StoreError(f"cannot write {what}: {err.strerror or err}{hint}") from err


def probe_writable(path: Path) -> None:
    """Fail early if nothing can be created at ``path``: probe its nearest existing folder with a
    real file (permission bits say nothing to root or to read-only mounts)."""
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"cannot create {path}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise StoreError(f"cannot write to {parent}: {err.strerror or err}") from None


def check_writable(path: Path) -> None:
    """Fail early, before any training, if ``path`` cannot hold a store."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory")
    probe_writable(path)


def create_store(path: str | Path | Location) -> zarr.Group:
    """Open the store at ``path`` (see :func:`location`) for appending, creating an empty one if
    there is none."""
    loc = location(path)
    if loc.path is None:  # memory://
        try:
            root = open_store(loc, mode="a")
        except NoStore:
            root = zarr.open_group(loc.target, mode="w", attributes={
                "kind": STORE_KIND, "schema_version": SCHEMA_VERSION})
    else:
        path = loc.path
        check_writable(path)
        if (path / "zarr.json").is_file():
            root = open_store(loc, mode="a")
        elif path.exists() and any(path.iterdir()):
            raise StoreError(f"{loc} exists, is not empty and is not a trajgen store")
        else:
            with writing(f"a store at {loc}"):
                # the root's metadata is written whole, attributes included, so a kill leaves no
                # root that is neither absent nor a trajgen store
                root = zarr.open_group(str(path), mode="w", attributes={
                    "kind": STORE_KIND, "schema_version": SCHEMA_VERSION})
    with writing(f"the groups of {loc}"):  # absent if a kill cut the creation short
        if "runs" not in root:
            root.create_group("runs")
        if "index" not in root:
            root.create_group("index", attributes={"count": 0, "page_size": INDEX_PAGE})
    return root


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


def _index_log(root: zarr.Group) -> tuple[zarr.Group | None, list[dict[str, Any]]]:
    """(index group, its committed entries in order) of a version-2 store."""
    if "index" not in root:
        return None, []
    group = root["index"]
    count, size = group.attrs.get("count"), group.attrs.get("page_size")
    if not (isinstance(count, int) and isinstance(size, int) and count >= 0 and size > 0):
        raise _malformed()
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
    return group, entries[:count]


def index(root: zarr.Group) -> dict[str, dict[str, Any]]:
    """The index: summary of every complete run the collector has registered, by run name,
    sorted. Raises if it is malformed (``trajgen verify --repair`` rebuilds it)."""
    if schema_version(root) == 1:
        entries = root.attrs.get("index", {})
        if not (isinstance(entries, dict) and all(map(_valid_summary, entries.values()))):
            raise _malformed()
        return dict(sorted(entries.items()))
    out: dict[str, dict[str, Any]] = {}
    for entry in _index_log(root)[1]:
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
    count, size = group.attrs.get("count"), group.attrs.get("page_size")
    if not (isinstance(count, int) and isinstance(size, int) and count >= 0 and size > 0):
        raise _malformed()
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
               "bytes_stored": int(sum(group[k].nbytes_stored() for k in ARRAY_DTYPES if k in group))}
    if "coords" in group:
        summary["n_params"] = int(sum(layer["numel"] for layer in a["layers"]))
    return summary


def coordinate_arrays(layers: list[Layer], coords: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``kind``, ``layer`` and ``pos`` of every coordinate (or of the flat positions ``coords``
    only), each ``(n_coords,)``, as the layer table implies them. Raises ValueError for a kind not
    in ``trajgen.nets.KINDS``."""
    kind = [np.full(layer.numel, KINDS.index(layer.kind), ARRAY_DTYPES["kind"]) for layer in layers]
    row = [np.full(layer.numel, i, ARRAY_DTYPES["layer"]) for i, layer in enumerate(layers)]
    pos = [np.arange(layer.numel, dtype=ARRAY_DTYPES["pos"]) for layer in layers]
    out = {"kind": np.concatenate(kind), "layer": np.concatenate(row), "pos": np.concatenate(pos)}
    return out if coords is None else {k: v[coords] for k, v in out.items()}


def check_coords(coords: np.ndarray, n_params: int) -> str | None:
    """What is wrong with a sampled run's ``coords`` for a model of ``n_params`` weights (None:
    nothing): they must be strictly increasing positions in ``[0, n_params)``."""
    if coords.ndim != 1 or not len(coords):
        return "coords must be a non-empty 1-D array"
    if coords[0] < 0 or coords[-1] >= n_params:
        return f"coords fall outside the model's {n_params} weights"
    if (np.diff(coords) <= 0).any():
        return "coords are not strictly increasing"
    return None


def create_run_group(runs: zarr.Group, name: str, spec: RunSpec, layers: list[Layer], n_snapshots: int,
                     time_chunk: int | None = None, coord_chunk: int = COORD_CHUNK,
                     coords: np.ndarray | None = None) -> zarr.Group:
    """An empty, incomplete group ``name`` for ``spec`` in ``runs`` (replacing any group of that name):
    history ``(n_coords, n_snapshots)`` filled with NaN, the per-coordinate arrays, and the
    attributes known before training. ``coords`` (n_coords,) int64: record only these flat
    positions (a sampled run, which also stores them); None: every coordinate. ``time_chunk``
    None: :func:`time_chunk_for` ``n_snapshots``."""
    time_chunk = time_chunk or time_chunk_for(n_snapshots)
    n_params = sum(layer.numel for layer in layers)
    if coords is not None:
        coords = np.asarray(coords, OPTIONAL_DTYPES["coords"])
        problem = check_coords(coords, n_params)
        if problem:
            raise StoreError(f"run {name}: {problem}")
    if name in runs:
        del runs[name]
    n_coords = n_params if coords is None else len(coords)
    group = runs.create_group(name)
    group.create_array("history", shape=(n_coords, n_snapshots), dtype=ARRAY_DTYPES["history"],
                       fill_value=np.nan, chunks=(min(coord_chunk, n_coords), min(time_chunk, n_snapshots)),
                       **history_codecs())
    per_coord = coordinate_arrays(layers, coords)
    if coords is not None:
        per_coord["coords"] = coords
    for key, values in per_coord.items():
        group.create_array(key, data=values, chunks=(min(coord_chunk, n_coords),), **small_codecs())
    group.attrs.update({"spec": spec.to_dict(), "layers": [layer.to_dict() for layer in layers],
                        "versions": versions(), "complete": False})
    return group


def finish_run_group(group: zarr.Group, step: np.ndarray, loss: np.ndarray, acc: np.ndarray,
                     final_test_acc: float, diverged: bool) -> dict[str, Any]:
    """Write the per-snapshot arrays (each ``(n_snapshots,)``), the results, then mark the run
    complete; returns its summary. ``history`` must be written already."""
    for name, values in (("step", step), ("loss", loss), ("acc", acc)):
        group.create_array(name, data=np.asarray(values, ARRAY_DTYPES[name]),
                           chunks=(max(1, len(values)),), **small_codecs())
    group.attrs.update({"final_test_acc": float(final_test_acc), "diverged": bool(diverged), "complete": True})
    return run_summary(group)


class RunWriter:
    """Streams one run into ``runs/<spec.name>``; the training loop never waits for the disk.

    Snapshots are copied into one of two preallocated ``(time_chunk, n_coords)`` float32 buffers
    (with ``coords``, a sampled run: only those flat positions of each snapshot are kept);
    a full buffer is compressed and written by a background thread while the other fills, so at
    most two time chunks (of at most ``MAX_TIME_CHUNK`` snapshots) are held, whatever the run's length. Any previous, incomplete group of
    the same name is replaced. Call :meth:`append` once per snapshot and :meth:`close` at the end;
    only ``close`` marks the run complete.
    """

    def __init__(self, path: str | Path, spec: RunSpec, layers: list[Layer],
                 time_chunk: int | None = None, coord_chunk: int = COORD_CHUNK, coords: np.ndarray | None = None):
        root = open_store(path, mode="a")
        self.where = f"run {spec.name} to {path}"
        with self._writing():
            self.group = create_run_group(root["runs"], spec.name, spec, layers, spec.n_snapshots, time_chunk,
                                          coord_chunk, coords)
        self.coords = None if coords is None else np.asarray(coords, OPTIONAL_DTYPES["coords"])
        self.history = self.group["history"]
        self.time_chunk = self.history.chunks[1]
        # snapshot-major, written transposed; one fills while the thread writes the other
        self.buffers = [np.empty((self.time_chunk, self.history.shape[0]), ARRAY_DTYPES["history"])
                        for _ in range(2)]
        self.n_buffered = 0
        self.n_written = 0  # snapshots handed to the writer thread
        self.step = np.empty(spec.n_snapshots, ARRAY_DTYPES["step"])
        self.loss = np.empty(spec.n_snapshots, ARRAY_DTYPES["loss"])
        self.acc = np.empty(spec.n_snapshots, ARRAY_DTYPES["acc"])
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{spec.name}")
        self._pending: Future | None = None

    def _writing(self):
        return writing(self.where, "; complete runs are kept: make room (or fix the location), "
                                   "then rerun the same command to resume")

    def append(self, step: int, weights: np.ndarray, loss: float, acc: float) -> None:
        """Record one snapshot: ``weights`` is the model's whole flat ``(n_params,)`` float32 vector
        (copied; a sampled run keeps its ``coords`` only)."""
        i = self.n_written + self.n_buffered
        self.buffers[0][self.n_buffered] = weights if self.coords is None else weights[self.coords]
        self.step[i], self.loss[i], self.acc[i] = step, loss, acc
        self.n_buffered += 1
        if self.n_buffered == self.time_chunk:
            self._flush()

    def _write(self, buffer: np.ndarray, t0: int, n: int) -> None:
        # C order: zarr's PCodec wrapper encodes a whole-chunk Fortran-ordered array in memory
        # order, scrambling it (zarr 3.1.6, numcodecs 0.16.6)
        with self._writing():
            self.history[:, t0: t0 + n] = np.ascontiguousarray(buffer[:n].T)

    def _wait(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _flush(self) -> None:
        if self.n_buffered:
            self._wait()  # the other buffer is free again
            self._pending = self._thread.submit(self._write, self.buffers[0], self.n_written, self.n_buffered)
            self.buffers.reverse()
            self.n_written += self.n_buffered
            self.n_buffered = 0

    def close(self, final_test_acc: float, diverged: bool = False) -> dict[str, Any]:
        """Write the rest, trim unused snapshots (a diverged run stops early), mark complete."""
        try:
            self._flush()
            self._wait()
        finally:
            self._thread.shutdown()
        n = self.n_written
        with self._writing():
            if n < self.history.shape[1]:
                self.history.resize((self.history.shape[0], n))
            return finish_run_group(self.group, self.step[:n], self.loss[:n], self.acc[:n],
                                    final_test_acc, diverged)


def read_error(err: BaseException) -> str:
    """A damaged chunk's error in a few words."""
    text = str(err)
    if "checksum" in text.lower():
        return "checksum mismatch"
    return f"{type(err).__name__}: {text.splitlines()[0][:80] if text else ''}".rstrip(": ")


class RunArray:
    """A run's array, read lazily; a chunk that cannot be read (checksum mismatch, garbage, a
    missing file) raises a one-line :class:`StoreError` naming the run instead of a codec error."""

    def __init__(self, run: str, key: str, array: zarr.Array):
        self.run, self.key, self.array = run, key, array
        self.shape, self.chunks, self.dtype, self.ndim = array.shape, array.chunks, array.dtype, array.ndim

    def __getitem__(self, selection) -> np.ndarray:
        try:
            return self.array[selection]
        except Exception as err:  # any codec or file error of a damaged chunk
            raise StoreError(f"run {self.run}: {self.key} cannot be read ({read_error(err)}); `trajgen verify "
                             "--repair` marks it for retraining by the same collect command") from None

    def __len__(self) -> int:
        return self.shape[0]


def run_array(root: zarr.Group, name: str, key: str) -> RunArray:
    """Array ``key`` of run ``name``, for reading (see :class:`RunArray`)."""
    try:
        return RunArray(name, key, root["runs"][name][key])
    except (KeyError, ValueError, TypeError) as err:
        raise StoreError(f"run {name} is malformed ({type(err).__name__}: {err}); "
                         "`trajgen verify` lists what is wrong") from None


@dataclass
class RunRecord:
    """A complete run opened for reading; ``history`` stays on disk until sliced."""

    name: str
    spec: RunSpec
    layers: list[Layer]
    history: RunArray
    kind: np.ndarray
    layer: np.ndarray
    pos: np.ndarray
    step: np.ndarray
    loss: np.ndarray
    acc: np.ndarray
    final_test_acc: float
    diverged: bool
    coords: np.ndarray | None = None  # a sampled run's flat positions (n_coords,); None: every coordinate


def open_run(path_or_root: str | Path | zarr.Group, name: str) -> RunRecord:
    """Run ``name`` for reading. Raises :class:`StoreError` if it is missing, incomplete,
    malformed or one of its small arrays is damaged (``history`` is checked when sliced)."""
    root = path_or_root if isinstance(path_or_root, zarr.Group) else open_store(path_or_root)
    if not is_complete(root, name):
        raise StoreError(f"run {name} is missing or incomplete")
    a = root["runs"][name].attrs
    try:
        spec, layers = RunSpec.from_dict(a["spec"]), [Layer.from_dict(d) for d in a["layers"]]
        final_test_acc, diverged = float(a["final_test_acc"]), bool(a["diverged"])
    except (KeyError, TypeError, ValueError) as err:  # a missing attribute, a bad spec
        raise StoreError(f"run {name} is malformed ({type(err).__name__}: {err}); "
                         "`trajgen verify` lists what is wrong") from None
    small = {k: run_array(root, name, k)[:] for k in ("kind", "layer", "pos", "step", "loss", "acc")}
    coords = run_array(root, name, "coords")[:] if "coords" in root["runs"][name] else None
    return RunRecord(name=name, spec=spec, layers=layers, history=run_array(root, name, "history"),
                     final_test_acc=final_test_acc, diverged=diverged, coords=coords, **small)
