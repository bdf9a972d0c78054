"""The rehearsal's shared pieces for the session: one anvil node on a free loopback port (the
suite's own, whatever network `ape test` connects to) and the artifact store: a bucket on the
session's S3-compatible server (tests/store_server.py), which every party process reaches through
the AWS_* variables it inherits; and each worker's own result store, a bucket on an S3 server of
its own, written with its own key pair and read by the requester over HTTP."""

import pytest

from harness import Anvil, Rehearsal


@pytest.fixture(scope="session")
def rehearsal(tmp_path_factory, store_server):
    root = tmp_path_factory.mktemp("rehearsal")
    anvil = Anvil(root)
    try:
        rehearsal = Rehearsal(root, anvil, store=store_server.bucket("rehearsal"),
                              own_buckets=True)
        yield rehearsal
        rehearsal.close()
    finally:
        anvil.stop()
