"""An S3-compatible store server on loopback for tests: moto's standalone server (MinIO has no
server package on PyPI, npm or Debian; moto's runs in-process, on a free port).

    with s3_server() as server:            # or the `store_server` fixture (tests/conftest.py)
        server.env                         # AWS_ENDPOINT_URL and credentials, for any process
        server.bucket("tasks")             # an empty bucket: "s3://tasks"

s3fs (and so fsspec's s3:// URLs) and botocore read AWS_ENDPOINT_URL, so a process started
with `server.env` talks to this server; the job runner's sealed environment passes AWS_*.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class StoreServer:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # what a client process needs to reach it

    def bucket(self, name: str) -> str:
        """Create the bucket `name` (if absent) and return its s3:// URL."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint,
                              aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                              region_name=self.env["AWS_DEFAULT_REGION"])
        client.create_bucket(Bucket=name)
        return f"s3://{name}"


@contextmanager
def s3_server() -> Iterator[StoreServer]:
    """Start the server on a free loopback port and point this process's environment at it
    (restored on exit)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "crowdml",
           "AWS_SECRET_ACCESS_KEY": "crowdml", "AWS_DEFAULT_REGION": "us-east-1"}
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield StoreServer(endpoint, env)
    finally:
        server.stop()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
