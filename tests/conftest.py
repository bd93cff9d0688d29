"""Shared fixtures. Stores are built once per session from real Fashion-MNIST runs."""
from __future__ import annotations

import pytest
import torch

from _apply_fixtures import built_once, tiny_original
from trajgen.collect import CollectConfig, collect
from trajgen import data as datasets


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST tensors (installed by `make test` from the Debian package)."""
    return datasets.load("fashion-mnist")


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> str:
    """A real collection: 9 runs (3 per architecture), 128 steps each, a snapshot every 2 steps;
    built once per session (tests only read it)."""
    return str(built_once(tmp_path_factory.getbasetemp(), "small.zarr", lambda path: collect(
        CollectConfig(store=str(path), runs=9, steps=128, every=2, workers=0, progress=False))))


@pytest.fixture(scope="module")
def one_thread():
    """Many small calls: torch's thread pool on a shared 2-core machine costs more than it gives.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny original's folder (:func:`_apply_fixtures.tiny_original`: model.pt, forget/, retain/, test/)."""
    return tiny_original(tmp_path_factory.getbasetemp())
