"""The tests' S3 bucket (served by trajgen.s3local), a flipped byte in one object, and a
store's whole content for comparing two stores array for array and run record for run record."""
from __future__ import annotations

import hashlib

import boto3

from trajgen import store

BUCKET = "trajgen-test"


def flip_byte(key: str, at: int = -5) -> None:
    """Flip one byte of object ``key`` of BUCKET (by default inside the chunk's last values)."""
    s3 = boto3.client("s3")
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[at] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))


def store_content(path: str) -> dict:
    """The index and, for every run group, its attributes and each array's shape, chunks and a hash
    of its values (NaN compares equal to NaN through the bytes)."""
    root = store.open_store(path)
    runs = {}
    for name in store.run_names(root):
        group = root["runs"][name]
        arrays = {key: (a.shape, a.chunks, hashlib.sha256(a[...].tobytes()).hexdigest())
                  for key, a in sorted(group.arrays())}
        runs[name] = (dict(group.attrs), arrays)
    return {"index": store.index(root), "runs": runs}
