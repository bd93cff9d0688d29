"""A tiny real original for the applier's tests: the prepare command's pipeline on 1,500
Fashion-MNIST images with an 8-16 channel CNN, built once per test session and shared by modules."""
from __future__ import annotations

from pathlib import Path

from invwnn.original import PrepareConfig, prepare

_BUILT: dict[str, Path] = {}

TINY = dict(train_size=1500, test_size=500, width=8, depth=2, epochs=8, lr=3e-3, batch_size=64)


def tiny_original(base: Path, name: str = "random", **overrides) -> Path:
    """Folder with model.pt, forget/, retain/, test/, split.json; cached per session by name."""
    if name not in _BUILT:
        out = base / name
        prepare(out, PrepareConfig(**{**TINY, **overrides}))
        _BUILT[name] = out
    return _BUILT[name]
