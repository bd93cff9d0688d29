"""What a store holds: the figures ``trajgen info`` prints."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from trajgen import store


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe(path: str | Path) -> dict[str, Any]:
    """Runs by architecture, optimizer and (episodes, twins, triples) forgetting rule, sizes, compression, how many runs record a sample of
    their coordinates, and final test accuracy spread of the complete runs in the store at ``path``. Reads the index, one listing of ``runs/`` and the attributes of episode and twin runs;
    the bytes on disk are the runs' recorded sizes (a version-1 store's files are walked)."""
    loc = store.location(path)
    root = store.open_store(loc)
    idx = store.index(root)
    present = store.run_names(root)
    complete = set(store.complete_in(root, idx, include_diverged=True))
    entries = [s for name, s in idx.items() if name in complete]
    good = [s for s in entries if not s["diverged"]]
    accs = np.array([s["final_test_acc"] for s in good], dtype=float)
    raw = sum(4 * s["n_coords"] * s["n_snapshots"] for s in entries)
    recorded = [s.get("bytes_stored") for s in entries]
    on_disk = (sum(r or 0 for r in recorded) if None not in recorded or loc.path is None
               else disk_bytes(loc.path))
    # episodes, twins and triples (their groups' names say so: a plain collection reads no attributes)
    rules = Counter(root["runs"][name].attrs["episode"]["rule"] for name in sorted(complete)
                    if name.startswith(("episode-", "twin-")))
    spread = ({"min": float(accs.min()), "median": float(np.median(accs)), "max": float(accs.max())}
              if len(accs) else None)
    return {
        "store": str(loc),
        "schema_version": store.schema_version(root),
        "runs": len(entries),
        "diverged": len(entries) - len(good),
        "incomplete": len([n for n in present if n not in complete]),
        "by_arch": dict(sorted(Counter(s["arch"] for s in entries).items())),
        "by_optimizer": dict(sorted(Counter(s["optimizer"] for s in entries).items())),
        "by_rule": dict(sorted(rules.items())),
        "coordinates": int(sum(s["n_coords"] for s in entries)),
        "snapshots": int(sum(s["n_snapshots"] for s in entries)),
        "values": int(raw // 4),
        "bytes_raw": int(raw),
        "bytes_on_disk": int(on_disk),
        "compression_ratio": raw / on_disk if on_disk else None,
        "sampled_runs": sum("n_params" in s for s in entries),
        "final_test_acc": spread,
    }


def format_description(d: dict[str, Any]) -> str:
    def counts(c: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.items()) or "-"

    lines = [
        f"store         {d['store']} (schema {d['schema_version']})",
        f"runs          {d['runs']} complete, {d['diverged']} of them diverged, {d['incomplete']} incomplete",
        f"by arch       {counts(d['by_arch'])}",
        f"by optimizer  {counts(d['by_optimizer'])}",
        *([f"by rule       {counts(d['by_rule'])}"] if d.get("by_rule") else []),
        f"coordinates   {d['coordinates']:,} in all; {d['snapshots']:,} snapshots; {d['values']:,} values",
        *([f"sampled       {d['sampled_runs']} runs record a sample of their coordinates (--coords)"]
          if d.get("sampled_runs") else []),
        f"size          {d['bytes_raw'] / 2**20:,.1f} MiB raw, {d['bytes_on_disk'] / 2**20:,.1f} MiB on disk"
        + (f" ({d['compression_ratio']:.2f}x)" if d["compression_ratio"] else ""),
    ]
    acc = d["final_test_acc"]
    if acc:
        lines.append(f"test accuracy min {100 * acc['min']:.1f}%  median {100 * acc['median']:.1f}%  "
                     f"max {100 * acc['max']:.1f}%")
    return "\n".join(lines)
