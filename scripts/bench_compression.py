"""Lossless codecs for the store's history chunks, measured on a real collection.

    .venv/bin/python scripts/bench_compression.py data/traj_eval.zarr [--runs 19] [--repeat 3]

Reads every history chunk (``(16384, 64)`` float32 blocks: one coordinate's snapshots contiguous)
of the first ``--runs`` complete runs, encodes each with every candidate codec through numcodecs,
checks the round trip bit for bit, and prints per codec: compression ratio (raw bytes / encoded
bytes over all chunks), encode and decode speed in MB/s of raw float32 on one thread (best of
``--repeat``). The store's own codec choice (``trajgen.store``) comes from this table.
"""
from __future__ import annotations

import argparse
import time

import numcodecs
import numpy as np
from numcodecs import Blosc, Zstd
from numcodecs.pcodec import PCodec

from trajgen import store


def candidates() -> dict[str, numcodecs.abc.Codec]:
    return {
        "blosc zstd-3 bit-shuffle (schema 1)": Blosc("zstd", 3, Blosc.BITSHUFFLE),
        "blosc zstd-3 byte-shuffle": Blosc("zstd", 3, Blosc.SHUFFLE),
        "zstd-3": Zstd(3),
        "pcodec level 4, delta auto": PCodec(4),
        "pcodec level 8, delta auto": PCodec(8),
        "pcodec level 8, no delta": PCodec(8, delta_spec="none"),
        "pcodec level 8, delta order 1": PCodec(8, delta_spec="try_consecutive", delta_encoding_order=1),
        "pcodec level 8, classic mode": PCodec(8, mode_spec="classic"),
    }


def chunks(path: str, n_runs: int):
    """Every history chunk of the first ``n_runs`` complete runs, as C-ordered float32 arrays."""
    root = store.open_store(path)
    for name in store.complete_runs(path, include_diverged=True)[:n_runs]:
        h = store.open_run(root, name).history
        c, t = h.chunks
        for c0 in range(0, h.shape[0], c):
            for t0 in range(0, h.shape[1], t):
                yield np.ascontiguousarray(h[c0:c0 + c, t0:t0 + t])


def measure(codec, blocks: list[np.ndarray], repeat: int) -> tuple[float, float, float]:
    """(ratio, encode MB/s, decode MB/s) of ``codec`` over ``blocks``; raises if lossy."""
    raw = sum(b.nbytes for b in blocks)
    enc_s, dec_s = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        encoded = [codec.encode(b) for b in blocks]
        enc_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        decoded = [codec.decode(e) for e in encoded]
        dec_s.append(time.perf_counter() - t)
    for b, d in zip(blocks, decoded):
        if not np.array_equal(np.frombuffer(d, np.float32).view(np.uint32), b.ravel().view(np.uint32)):
            raise AssertionError(f"{codec} is not lossless")
    size = sum(len(e) for e in encoded)
    return raw / size, raw / 1e6 / min(enc_s), raw / 1e6 / min(dec_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--runs", type=int, default=19)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    numcodecs.blosc.set_nthreads(1)
    blocks = list(chunks(args.store, args.runs))
    mib = sum(b.nbytes for b in blocks) / 2**20
    print(f"{args.store}: {len(blocks)} history chunks of {args.runs} runs, {mib:.1f} MiB raw float32")
    print("| codec | ratio | encode MB/s | decode MB/s |\n|---|---|---|---|")
    for name, codec in candidates().items():
        ratio, enc, dec = measure(codec, blocks, args.repeat)
        print(f"| {name} | {ratio:.2f}x | {enc:.0f} | {dec:.0f} |", flush=True)


if __name__ == "__main__":
    main()
