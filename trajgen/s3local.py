"""An S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's server mode (from the
``dev`` extra), a bucket, and the environment (dummy credentials, endpoint) that every process
reaching it needs. Nothing leaves this machine."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[dict[str, str]]:
    """Start a server holding an empty ``bucket``, set its environment in ``os.environ`` (restored
    on exit) and yield that environment, for subprocesses; the server stops on exit."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    saved = {key: os.environ.get(key) for key in [*env, "AWS_PROFILE"]}
    try:
        os.environ.update(env)
        os.environ.pop("AWS_PROFILE", None)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep another server's endpoint
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield dict(os.environ)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
