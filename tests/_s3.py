"""An S3-compatible server on 127.0.0.1 for the tests (moto's server mode, dummy credentials set in
this process's environment and handed to subprocesses), and a store's whole content for comparing
two stores array for array and run record for run record."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket

import boto3
import pytest
from moto.server import ThreadedMotoServer

from trajgen import store

BUCKET = "trajgen-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server():
    """Yields the environment (credentials, endpoint) of a fresh server holding bucket BUCKET."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            mp.delenv("AWS_PROFILE", raising=False)
            s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep another server's endpoint
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield {**os.environ, **env}
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


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
