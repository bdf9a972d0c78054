"""The agent's event scan on a live network: paged log queries from the board's creation
block, its place kept in the store across restarts, and a node's errors outlived."""

import pytest

from ape_crowdml.agent import Agent
from ape_crowdml.parties import Requester, Worker
from crowdml_support import (DEPOSIT, REWARD, step_admitted, tiny_spec_file,
                             board, config)  # noqa: F401 - board, config: fixtures


@pytest.fixture
def publish(board, accounts, config, tmp_path):
    requester = Requester(board, accounts[0], config=config)
    spec = tiny_spec_file(tmp_path)
    return lambda: requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                                     requester_coin=False)


def recording(board, monkeypatch):
    """Record the block ranges the agent asks the node for."""
    pages, query = [], board.published_between

    def published_between(first, last):
        pages.append((first, last))
        return query(first, last)

    monkeypatch.setattr(board, "published_between", published_between)
    return pages


def test_the_scan_pages_from_the_creation_block_and_resumes_after_a_restart(
        board, accounts, config, publish, chain, monkeypatch):
    first, second = publish(), publish()
    chain.mine(4)
    third = publish()
    pages = recording(board, monkeypatch)
    worker = Worker(board, accounts[1], config=config)
    agent = Agent(worker, page_blocks=3, log=lambda line: None)
    assert agent.next_block == board.start_block > 0  # read from the board, not block 0
    agent._discover()
    head = chain.blocks.head.number
    assert agent._watching == {first, second, third}
    assert pages[0][0] == board.start_block and pages[-1][1] == head
    assert all(last - first_ + 1 <= 3 for first_, last in pages)
    assert all(pages[i][1] + 1 == pages[i + 1][0] for i in range(len(pages) - 1))  # no gap

    agent._forget(first)  # as when the task has ended
    fourth = publish()
    pages.clear()
    restarted = Agent(Worker(board, accounts[1], config=config), page_blocks=3,
                      log=lambda line: None)
    assert restarted.next_block == head + 1 and restarted._watching == {second, third}
    restarted._discover()
    assert pages == [(head + 1, chain.blocks.head.number)]  # only the new blocks
    assert restarted._watching == {second, third, fourth}
    # Another account's agent keeps its own place.
    assert Agent(Worker(board, accounts[2], config=config),
                 log=lambda line: None).next_block == board.start_block


class RateLimited(Exception):
    pass


def test_the_agent_outlives_failing_log_queries_with_backoff(board, accounts, config, publish,
                                                             monkeypatch):
    known = publish()
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    agent._discover()
    now = [1000.0]
    monkeypatch.setattr("ape_crowdml.agent.monotonic", lambda: now[0])
    query, failures = board.published_between, []

    def flaky(first, last):
        if len(failures) < 2:
            failures.append(first)
            raise RateLimited("429 Too Many Requests\nmore detail")
        return query(first, last)

    monkeypatch.setattr(board, "published_between", flaky)
    later = publish()
    scan_from = agent.next_block
    assert step_admitted(agent)  # the scan fails, the known task is joined all the same
    assert lines == [f"event scan from block {scan_from} failed (RateLimited: 429 Too Many "
                     "Requests); retrying in 1 s", f"task {known}: joined"]
    agent.step()
    assert len(failures) == 1  # within the backoff: no query
    now[0] += 1
    agent.step()
    assert lines[-1].endswith("retrying in 2 s") and len(failures) == 2
    now[0] += 2
    head = board.head
    step_admitted(agent)
    assert later in agent._watching and f"task {later}: joined" in lines
    assert agent.next_block == head + 1
