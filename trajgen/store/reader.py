"""Reading a complete run: its arrays lazily, a damaged chunk as a one-line :class:`StoreError`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from trajgen.nets import Layer
from trajgen.spec import RunSpec
from trajgen.store.index import is_complete
from trajgen.store.location import open_store
from trajgen.store.schema import StoreError


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
