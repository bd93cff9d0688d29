"""The trajectory store's schema, in one place.

Layout (Zarr v3, one folder or object prefix; schema version 2)::

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

The index (:mod:`trajgen.store.index`) is an append-only log of entries ``{"run": name, <summary>}``
(a complete run) or ``{"run": name, "dropped": true}``, in pages of ``INDEX_PAGE`` entries.

A run group is written only by the task that trains it, and marked ``complete`` only after its last
write; the index is written only by the collecting client, which indexes a run only once it is
complete and drops an entry before its run is retrained. Every write replaces one whole file (zarr's
local store writes a temporary file and renames it) or one whole object (a PUT), so a kill leaves
each file or object old or new. Where a store may live: :mod:`trajgen.store.location`. Version-1
stores (Blosc without checksums, the whole index in one root attribute) are read as before and never
written to: ``trajgen migrate`` copies one into a version-2 store.
"""
from __future__ import annotations

import platform
import warnings
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.codecs.numcodecs import PCodec

from trajgen.nets import KINDS, Layer

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
