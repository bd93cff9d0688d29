"""Where a store lives, decided here and nowhere else: a local path (or ``file://`` URL), an
in-process ``memory://`` URL, or an object-store URL (``s3://bucket/prefix``, and the other schemes
fsspec serves: ``gs://``, ``az://``, ...) through zarr's own ``FsspecStore``.

Object stores take their credentials and endpoint from the standard environment of every process
that opens them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL`` for S3-compatible servers), never from the URL, the command line or the store.
Their guarantees are the file system's, argued for objects: every write zarr makes is one whole
object (a PUT is atomic: a killed writer leaves each object old or new), so the store's commit order
(a run's ``complete`` flag last, the index's ``count`` after its page) holds as on a file system.
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import zarr
from zarr.core.sync import sync

from trajgen.store.schema import INDEX_PAGE, READABLE_VERSIONS, SCHEMA_VERSION, STORE_KIND, NoStore, StoreError

# What a store that dask workers cannot reach is told.
NEEDED = ("a store every worker can reach: an object-store URL (s3://bucket/prefix), or a path on a file "
          "system mounted at the same place on every machine (a shared file system such as NFS)")


@dataclass(frozen=True)
class Location:
    """Where a store lives: ``path``, a local path (given as a path or a ``file://`` URL), or
    ``url``, a ``memory://`` URL (this process only) or an object-store URL."""

    text: str
    path: Path | None = None
    url: str | None = None

    @property
    def target(self) -> str:
        """The local path (zarr's local store, whose writes replace files by rename) or the URL."""
        return str(self.path) if self.path is not None else self.url

    @property
    def shared(self) -> bool:
        """Whether other processes (dask workers) can reach the store: all but ``memory://``."""
        return self.path is not None or not self.url.startswith("memory://")

    @property
    def for_workers(self) -> str:
        """What a dask worker, possibly on another machine, is given: an absolute path or the URL."""
        return str(self.path.resolve()) if self.path is not None else self.url

    def zarr_store(self, read_only: bool = False):
        """What ``zarr.open_group`` is given. Object-store listings are not cached: a store is read
        while other processes write to it."""
        if self.path is not None:
            return str(self.path)
        from zarr.storage import FsspecStore

        options = {} if self.url.startswith("memory://") else {"use_listings_cache": False}
        return FsspecStore.from_url(self.url, storage_options=options, read_only=read_only)

    def __str__(self) -> str:
        return self.text


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def location(store: str | Path | Location) -> Location:
    """Parse ``--store``: a local path, a ``file://`` URL (``file:///abs/path``; read and written as
    that local path), ``memory://NAME`` (one process only) or a URL of a scheme fsspec serves. An
    unknown scheme, a scheme whose package is not installed, or credentials inside the URL raise a
    one-line :class:`StoreError`."""
    if isinstance(store, Location):
        return store
    if isinstance(store, Path) or "://" not in str(store):
        return Location(str(Path(store)), path=Path(store))
    text = str(store)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"{text}: a file:// URL of another host ({parts.netloc}); give {NEEDED}")
        if not parts.path:
            raise StoreError(f"{text}: a file:// URL without a path (file:///abs/path)")
        return Location(text, path=Path(unquote(parts.path)))
    if parts.username or parts.password:
        raise StoreError(f"{scheme}://: credentials do not belong in a store URL; set them in the "
                         "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise StoreError(f"{text}: {scheme}:// stores are not supported; give a path or {NEEDED}") from None
    except ImportError as err:
        raise StoreError(f"{text}: {_one_line(err)}") from None
    return Location(text, url=text)


def shared_location(store: str | Path | Location, in_process: str = " (or train in this process: --workers 0)"
                    ) -> Location:
    """:func:`location`, refusing a store that dask workers (other processes) cannot reach;
    ``in_process`` ends the message (what else the user can do)."""
    loc = location(store)
    if not loc.shared:
        raise StoreError(f"{loc}: a memory:// store lives in one process and dask workers cannot reach "
                         f"it; give {NEEDED}{in_process}")
    return loc


def stored_bytes(group: zarr.Group, members) -> int:
    """Bytes (metadata and chunks) stored under the ``members`` of ``group`` that exist. On an
    object store one listing gives every size (zarr would ask for each chunk's)."""
    zstore = group.store
    if not hasattr(zstore, "fs"):  # zarr's local store: a stat per file
        return int(sum(group[k].nbytes_stored() for k in members if k in group))
    root = "/".join(p.strip("/") for p in (zstore.path, group.path) if p.strip("/"))
    found = sync(zstore.fs._find(root, detail=True))
    return int(sum(info["size"] for path, info in found.items()
                   if path.strip("/")[len(root) + 1:].split("/")[0] in members))


def _has_root(loc: Location) -> bool:
    """Whether the store's root ``zarr.json`` exists; an object store that cannot be reached (no
    endpoint, denied access, no bucket) is a one-line :class:`StoreError`, before any write."""
    if loc.path is not None:
        return (loc.path / "zarr.json").is_file()
    zstore = loc.zarr_store(read_only=True)
    try:
        if sync(zstore.exists("zarr.json")):
            return True
        bucket = zstore.fs._strip_protocol(loc.url).split("/")[0]  # the bucket or container
        missing = loc.shared and not sync(zstore.fs._exists(bucket))
    except Exception as err:  # botocore, aiohttp and fsspec raise many types
        raise StoreError(f"cannot reach {loc}: {_one_line(err)}") from None
    if missing:
        raise StoreError(f"{loc}: the bucket {bucket} does not exist (or these credentials cannot see it)")
    return False


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
    if not _has_root(loc):
        raise NoStore(f"{loc} is not a trajgen store (no zarr.json)")
    try:
        # Zarr v3 without consolidated metadata, as every store is written: no probing for
        # v2 or consolidated metadata files (four requests each on an object store)
        root = zarr.open_group(loc.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3,
                               use_consolidated=False)
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise StoreError(f"cannot open {loc}: {_one_line(err)}") from err
    return _check_root(root, loc, mode)


@contextlib.contextmanager
def writing(what: str, hint: str = ""):
    """Turn a failed write (disk full, read-only file system, quota, permissions, a missing bucket)
    into a one-line StoreError naming ``what``. Each write replaces one whole file or object, so
    the one being written keeps its old content."""
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


def _empty(loc: Location) -> bool:
    if loc.path is not None:
        return not loc.path.exists() or not any(loc.path.iterdir())
    return sync(loc.zarr_store(read_only=True).is_empty(""))


def create_store(path: str | Path | Location) -> zarr.Group:
    """Open the store at ``path`` (see :func:`location`) for appending, creating an empty one if
    there is none (a failed creation leaves nothing written)."""
    loc = location(path)
    if loc.path is not None:  # fail before any training if nothing can be written there
        if loc.path.exists() and not loc.path.is_dir():
            raise StoreError(f"{loc} exists and is not a directory")
        probe_writable(loc.path)
    if _has_root(loc):
        root = open_store(loc, mode="a")
    elif not _empty(loc):
        raise StoreError(f"{loc} exists, is not empty and is not a trajgen store")
    else:
        with writing(f"a store at {loc}"):
            # the root's metadata is written whole, attributes included, so a kill leaves no
            # root that is neither absent nor a trajgen store
            root = zarr.open_group(loc.zarr_store(), mode="w", attributes={
                "kind": STORE_KIND, "schema_version": SCHEMA_VERSION})
    with writing(f"the groups of {loc}"):  # absent if a kill cut the creation short
        if "runs" not in root:
            root.create_group("runs")
        if "index" not in root:
            root.create_group("index", attributes={"count": 0, "page_size": INDEX_PAGE})
    return root
