"""docs/store.md's "Compression" figures: lossless codecs for history chunks, on real collections.

    .venv/bin/python scripts/bench_compression.py data/traj_eval.zarr [more stores] [--runs N] [--repeat 3] [--only a,b]
    .venv/bin/python scripts/bench_compression.py data/traj_eval.zarr --entropy
    .venv/bin/python scripts/bench_compression.py --share [--pairs 3] [--steps 512]

Reads the history of every complete run (or the first ``--runs``) of each store, cuts it into
chunks of ``COORD_CHUNK`` coordinates and a candidate's time chunking (one coordinate's snapshots
contiguous, C order, as the store writes them), encodes each chunk with the candidate codec through
numcodecs on one thread, checks the round trip bit for bit (a lossy candidate is reported as such),
and prints per candidate: compression ratio (raw bytes / encoded bytes over all chunks), encode and
decode speed in MB/s of raw float32, and the encode cost of one full ``(16384, 64)`` chunk in ms.
Codecs alternate, A B A B, ``--repeat`` rounds, and each figure is the best round: drift of a
shared machine falls on every candidate alike.

``--entropy`` estimates what delta coding along time can reach on the same data: each value's
change since the previous snapshot, as pcodec sees it (the float's order-preserving integer),
costs its magnitude's bits plus a sign plus the entropy of its magnitude class (octave), as a coder
that knows nothing finer than the octave would spend (pcodec's finer bins do a few % better).

``--share``: the writer's share of a run's time. For one mlp, cnn and vit spec of the default
collection (seed 0, ``--steps`` steps, a snapshot every 4), a run is trained holding its snapshots
in memory (A), then its history is written through zarr into a temporary store with each codec
and time chunking (B, C ...), as ``RunWriter``'s background thread does (transpose, encode,
CRC32C, file write), ``--pairs`` times; per codec the median of the per-pair ratios write
seconds / training seconds.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time

import numcodecs
import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from numcodecs.pcodec import PCodec

from trajgen import store

FULL_CHUNK_MB = store.COORD_CHUNK * store.TIME_CHUNK * 4 / 1e6


class ScaleGroupedPCodec:
    """Not adoptable (a custom codec: plain zarr could not read it), measured as a ceiling: the
    chunk's coordinates grouped by the scale of their changes along time, each group a separate
    PCodec chunk with its own bins; the group of each coordinate is stored (zstd)."""

    codec_id = "scale-grouped-pcodec"

    def __init__(self, level: int = 8):
        self.inner = PCodec(level, mode_spec="classic")

    def encode(self, buf: np.ndarray) -> bytes:
        b = np.ascontiguousarray(buf, np.float32)
        u = b.view(np.uint32).astype(np.int64)
        lat = np.where(u & 0x80000000, 0xFFFFFFFF - u, u | 0x80000000)
        d = np.abs(np.diff(lat, axis=1)) if b.shape[1] > 1 else np.zeros((b.shape[0], 1), np.int64)
        group = (np.floor(np.log2(np.median(d, axis=1) + 1)).astype(np.uint8) // 2)
        parts = [self.inner.encode(np.ascontiguousarray(b[group == g])) for g in np.unique(group)]
        head = struct.pack("<III", *b.shape, len(parts)) + b"".join(struct.pack("<I", len(p)) for p in parts)
        ids = Zstd(3).encode(group)
        return head + struct.pack("<I", len(ids)) + ids + b"".join(parts)

    def decode(self, data: bytes) -> np.ndarray:
        n, t, k = struct.unpack_from("<III", data)
        sizes = struct.unpack_from(f"<{k}I", data, 12)
        at = 12 + 4 * k
        (n_ids,) = struct.unpack_from("<I", data, at)
        group = np.frombuffer(Zstd(3).decode(data[at + 4: at + 4 + n_ids]), np.uint8)
        at += 4 + n_ids
        out = np.empty((n, t), np.float32)
        for g, size in zip(np.unique(group), sizes):
            out[group == g] = np.frombuffer(self.inner.decode(data[at: at + size]), np.float32).reshape(-1, t)
            at += size
        return out


def candidates() -> dict[str, tuple[object, str]]:
    """name -> (numcodecs codec, time chunking: ``"64"`` fixed chunks of 64 snapshots, ``"run"``
    one chunk over the whole run, ``"balanced"`` the fewest chunks of at most 128 snapshots, of
    equal length)."""
    classic8 = PCodec(8, mode_spec="classic")
    return {
        "blosc zstd-3 bit-shuffle (schema 1)": (Blosc("zstd", 3, Blosc.BITSHUFFLE), "64"),
        "blosc zstd-9 byte-shuffle": (Blosc("zstd", 9, Blosc.SHUFFLE), "64"),
        "pcodec level 8, classic (schema 2)": (classic8, "64"),
        "pcodec level 10, classic": (PCodec(10, mode_spec="classic"), "64"),
        "pcodec level 8, classic, delta order 2": (PCodec(8, mode_spec="classic", delta_spec="try_consecutive",
                                                           delta_encoding_order=2), "64"),
        "pcodec level 8, classic, one page per chunk": (PCodec(8, mode_spec="classic", equal_pages_up_to=1 << 21),
                                                         "64"),
        "pcodec level 8, classic, balanced time chunks <= 128": (classic8, "balanced"),
        "pcodec level 8, classic, one time chunk per run": (classic8, "run"),
        "ceiling: scale-grouped pcodec (custom codec)": (ScaleGroupedPCodec(8), "64"),
    }


def time_chunk(scheme: str, n_snapshots: int) -> int:
    if scheme == "run":
        return n_snapshots
    if scheme == "balanced":
        return store.balanced_time_chunk(n_snapshots, 2 * store.TIME_CHUNK)
    return int(scheme)


def histories(path: str, n_runs: int | None):
    """The whole history ``(n_coords, n_snapshots)`` of each complete run, in index order."""
    root = store.open_store(path)
    for name in store.complete_runs(path, include_diverged=True)[:n_runs]:
        yield store.open_run(root, name).history[:]


def cut(history: np.ndarray, t: int) -> list[np.ndarray]:
    c = store.COORD_CHUNK
    return [np.ascontiguousarray(history[c0:c0 + c, t0:t0 + t])
            for c0 in range(0, history.shape[0], c) for t0 in range(0, history.shape[1], t)]


def as_bytes(decoded) -> np.ndarray:
    """A codec's decoded output (bytes or an array) as a flat uint8 array."""
    if isinstance(decoded, np.ndarray):
        return np.ascontiguousarray(decoded).reshape(-1).view(np.uint8)
    return np.frombuffer(decoded, np.uint8)


def compare(hists: list[np.ndarray], repeat: int, only: list[str]) -> None:
    raw = sum(h.nbytes for h in hists)
    cands = {n: c for n, c in candidates().items() if not only or any(o in n for o in only)}
    blocks = {s: [b for h in hists for b in cut(h, time_chunk(s, h.shape[1]))] for _, s in cands.values()}
    enc_s = {n: [] for n in cands}
    dec_s = {n: [] for n in cands}
    sizes, lossless = {}, {}
    for _ in range(repeat):  # A B A B: each round encodes with every candidate
        for name, (codec, scheme) in cands.items():
            t = time.perf_counter()
            encoded = [codec.encode(b) for b in blocks[scheme]]
            enc_s[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            decoded = [codec.decode(e) for e in encoded]
            dec_s[name].append(time.perf_counter() - t)
            sizes[name] = sum(len(e) for e in encoded)
            lossless[name] = all(np.array_equal(as_bytes(d), b.reshape(-1).view(np.uint8))
                                 for b, d in zip(blocks[scheme], decoded))
    print("| codec, time chunks | ratio | encode MB/s | ms per 16384x64 chunk | decode MB/s | lossless |")
    print("|---|---|---|---|---|---|")
    for name in cands:
        enc = raw / 1e6 / min(enc_s[name])
        print(f"| {name} | {raw / sizes[name]:.3f}x | {enc:.0f} | {1e3 * FULL_CHUNK_MB / enc:.0f} | "
              f"{raw / 1e6 / min(dec_s[name]):.0f} | {'yes' if lossless[name] else 'NO'} |", flush=True)


def entropy(hists: list[np.ndarray]) -> None:
    """Bits per value that delta coding along time needs at least (see the module's docstring)."""
    offset_bits, n, mags, per_coord = 0.0, 0, [], []
    for h in hists:
        u = h.view(np.uint32).astype(np.int64)
        lat = np.where(u & 0x80000000, 0xFFFFFFFF - u, u | 0x80000000)
        d = np.diff(lat, axis=1)
        mag = np.floor(np.log2(np.abs(d) + 1)).astype(np.int64)
        offset_bits += mag.sum() + (d != 0).sum() + 32 * h.shape[0]  # the first value: raw
        n += h.size
        mags.append(mag.ravel())
        per_coord.append(np.repeat(np.median(mag, axis=1).astype(np.int64), mag.shape[1]))
    mag, cls = np.concatenate(mags), np.concatenate(per_coord)

    def h_of(x: np.ndarray) -> float:
        p = np.bincount(x) / len(x)
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    h_marg = h_of(mag)
    h_cond = sum(len(mag[cls == c]) / len(mag) * h_of(mag[cls == c]) for c in np.unique(cls))
    base = offset_bits / n
    print(f"changes along time: {base:.2f} bits/value of magnitude and sign, magnitude class "
          f"{h_marg:.2f} bits ({h_cond:.2f} knowing the coordinate's typical class); an octave model "
          f"needs {base + h_marg:.2f} bits/value = {32 / (base + h_marg):.2f}x ({32 / (base + h_cond):.2f}x with "
          f"the coordinate's class as context); 2.0x needs 16.0")


def share(pairs: int, steps: int) -> None:
    """The writer's time as a share of a run's training time (see the module's docstring)."""
    import torch

    from trajgen import data as datasets
    from trajgen.collect import CollectConfig, plan
    from trajgen.train import build_model, snapshots

    torch.set_num_threads(1)
    data = datasets.load_cached("fashion-mnist", None)
    layouts = {"pcodec 8 classic, time chunks of 64 (schema 2)": (store.TIME_CHUNK, False),
               "pcodec 8 classic, balanced time chunks <= 128": (None, True)}
    print("| arch | coordinates | training s (median) | " + " | ".join(layouts) + " |")
    print("|---|---|---|" + "---|" * len(layouts))
    for arch in ("mlp", "cnn", "vit"):
        spec = plan(CollectConfig(archs=(arch,), runs=1, steps=steps, every=4))[0]
        ratios = {k: [] for k in layouts}
        train_s = []
        for _ in range(pairs):
            model = build_model(spec, data)
            t = time.perf_counter()
            snaps = [s.weights for s in snapshots(spec, model, data)]
            train_s.append(time.perf_counter() - t)
            buf = np.stack(snaps)  # snapshot-major, as RunWriter's buffers
            for name, (tc, balanced) in layouts.items():
                tc = store.balanced_time_chunk(len(snaps), 2 * store.TIME_CHUNK) if balanced else tc
                with tempfile.TemporaryDirectory() as tmp:
                    root = zarr.open_group(tmp, mode="w")
                    a = root.create_array("h", shape=(buf.shape[1], buf.shape[0]), dtype=np.float32,
                                          chunks=(min(store.COORD_CHUNK, buf.shape[1]), tc),
                                          fill_value=np.nan, **store.history_codecs())
                    t = time.perf_counter()
                    for t0 in range(0, buf.shape[0], tc):
                        a[:, t0:t0 + tc] = np.ascontiguousarray(buf[t0:t0 + tc].T)
                    ratios[name].append((time.perf_counter() - t) / train_s[-1])
        print(f"| {arch} | {buf.shape[1]:,} | {statistics.median(train_s):.2f} | "
              + " | ".join(f"{100 * statistics.median(r):.1f}% [{100 * min(r):.1f}, {100 * max(r):.1f}]"
                           for r in ratios.values()) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="*")
    parser.add_argument("--runs", type=int, default=None, help="first N complete runs of each store [all]")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help="comma list: candidates whose name holds one of these")
    parser.add_argument("--entropy", action="store_true", help="the bound of delta coding instead of the table")
    parser.add_argument("--share", action="store_true", help="the writer's share of a run's time")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=512)
    args = parser.parse_args()
    numcodecs.blosc.set_nthreads(1)
    if args.share:
        share(args.pairs, args.steps)
    for path in args.stores:
        hists = list(histories(path, args.runs))
        mib = sum(h.nbytes for h in hists) / 2**20
        print(f"\n{path}: {len(hists)} runs, {mib:.1f} MiB raw float32")
        if args.entropy:
            entropy(hists)
        else:
            compare(hists, args.repeat, [o for o in args.only.split(",") if o])


if __name__ == "__main__":
    main()
