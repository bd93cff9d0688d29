"""Atomic file writes (text, bytes, plots) and the version record every artifact carries."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch


def versions() -> dict[str, str]:
    from importlib.metadata import version
    import torchvision
    return {"invwnn": version("invwnn"), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__)}


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path``: readers see the old file or
    the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the suffix: torch.export.save warns about a file not ending in .pt2
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_fig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    pyplot().close(fig)


def write_files(files: dict[Path, str | bytes]) -> list[Path]:
    """Write each path's text (or bytes) atomically; the paths."""
    for path, body in files.items():
        put = Path.write_bytes if isinstance(body, bytes) else Path.write_text
        atomic_write(path, lambda tmp, body=body, put=put: put(Path(tmp), body))
    return list(files)
