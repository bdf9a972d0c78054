"""The fork suite's session: an upstream chain, started before ape connects to the fork.

`ape test tests/fork --network ethereum:mainnet-fork:foundry` (other networks skip the suite):
upstream_chain.py starts the upstream, a second anvil with mainnet's chain id, and leaves a
board with tasks in flight on it; ape then forks it as it would fork mainnet.
"""

from pathlib import Path

import pytest

from upstream_chain import Upstream, prepare_upstream, teardown

HERE = Path(__file__).parent
_upstream: Upstream | None = None


def forks_ethereum_mainnet(config) -> bool:
    return (config.getoption("network") or "").startswith("ethereum:mainnet-fork:")


def pytest_collection_finish(session):
    """Runs before ape connects the session's provider (ape connects once collection is done),
    and only when this folder's tests are collected against a mainnet fork."""
    global _upstream
    if not forks_ethereum_mainnet(session.config):
        return
    if not any(HERE in item.path.parents for item in session.items):
        return
    try:
        _upstream = prepare_upstream()
    except BaseException:
        teardown.close()
        raise


def pytest_unconfigure(config):
    teardown.close()


@pytest.fixture(scope="session")
def upstream() -> Upstream:
    if _upstream is None:
        pytest.skip("the fork suite runs on a fork of mainnet: "
                    "ape test tests/fork --network ethereum:mainnet-fork:foundry")
    return _upstream
