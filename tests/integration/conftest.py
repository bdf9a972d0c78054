"""The rehearsal's shared piece for the session: one anvil node on a free loopback port (the
suite's own, whatever network `ape test` connects to). Nothing else is shared: every party has
a bucket of its own (its own S3 server and key pair; tests/store_server.py), read by the others
over HTTP, and its processes inherit no credentials."""

import pytest

from harness import Anvil, Rehearsal


@pytest.fixture(scope="session")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    anvil = Anvil(root)
    try:
        rehearsal = Rehearsal(root, anvil, own_buckets=True)
        yield rehearsal
        rehearsal.close()
    finally:
        anvil.stop()
