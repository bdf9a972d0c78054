"""The rehearsal's shared pieces for the session: one anvil node on a free loopback port (the
suite's own, whatever network `ape test` connects to) and the artifact store folder."""

import pytest

from harness import Anvil, Rehearsal


@pytest.fixture(scope="session")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    anvil = Anvil(root)
    try:
        yield Rehearsal(root, anvil)
    finally:
        anvil.stop()
