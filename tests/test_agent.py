"""The agent completes tasks on its own, in process and through `ape crowdml agent`."""

import re

import pytest
from ape._cli import cli as ape_cli
from ape.logging import logger
from click.testing import CliRunner

from ape_crowdml.agent import Agent
from ape_crowdml.board import Phase
from ape_crowdml.parties import Requester, Worker, deploy_board
from ape_crowdml.render import wei
from crowdml_support import DEPOSIT, REWARD, isolated_config, tiny_spec_file


@pytest.fixture
def config(tmp_path):
    return isolated_config(tmp_path)


@pytest.fixture
def board(accounts, config):
    return deploy_board(accounts[0], config=config)


def test_two_agents_complete_a_task_and_share_the_reward(board, accounts, config, tmp_path):
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, requester_coin=False)
    lines = []
    agents = [Agent(Worker(board, accounts[i], config=config), log=lines.append) for i in (1, 2)]
    for _ in range(10):
        for agent in agents:
            agent.step()
        if all(agent.finished for agent in agents):
            break
    assert board.phase(task) == Phase.AGREED, lines
    assert board.claims(task) == {accounts[i].address: DEPOSIT + REWARD // 2 for i in (1, 2)}
    assert sum("revealed" in line for line in lines) == 2


def test_agents_abort_a_withheld_coin_and_take_the_reward(board, accounts, config, tmp_path, chain):
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, join_blocks=4)
    lines = []
    agents = [Agent(Worker(board, accounts[i], config=config), log=lines.append) for i in (1, 2)]
    for _ in range(12):
        for agent in agents:
            if not agent.step():
                chain.mine(1)
    assert board.phase(task) == Phase.COIN_WITHHELD
    assert f"task {task}: window closed, coin withheld" in lines
    assert board.claims(task) == {accounts[i].address: DEPOSIT + REWARD // 2 for i in (1, 2)}


def test_cli_agent_waits_out_an_idle_coworker(board, accounts, config, tmp_path, networks, project):
    """The other worker joins and never commits: the agent commits, lets the commit window
    close (mining on the local chain), reveals, settles and claims its half deposit."""
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
        commit_blocks=5, reveal_blocks=5, requester_coin=False)
    board.join(accounts[2], task)
    overrides = {"crowdml": {"state_folder": str(config.state_folder)}}
    if networks.provider.name == "foundry":
        overrides["foundry"] = {"host": networks.provider.uri}
    level = logger.level  # `-v INFO`: the suite may run quieter (`ape test -q`)
    with project.temp_config(**overrides):
        try:
            result = CliRunner().invoke(ape_cli, [
                "crowdml", "agent", "--tasks", "1", "--poll", "0", "--mine-when-idle",
                "--board", board.address, "-v", "INFO",
                "--account", "TEST::1", "--network", networks.provider.network_choice,
            ], catch_exceptions=False)
        finally:
            logger.set_level(level)
    assert result.exit_code == 0, result.output
    assert board.phase(task) == Phase.FAILED
    assert board.claims(task) == {accounts[1].address: DEPOSIT // 2}
    # Through ape's logger, each line with its time: "2026-01-31 12:00:00,123 INFO:  task …".
    assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO: +task {task}: claimed "
                     rf"{re.escape(wei(DEPOSIT // 2))} \(failed\)$", result.output, re.MULTILINE)


class Polls(Exception):
    """Ends an agent's run loop after a few idle polls."""


@pytest.mark.parametrize("mine_when_idle", [False, True])
def test_an_idle_agent_leaves_the_chain_clock_alone(board, accounts, config, chain, monkeypatch,
                                                    mine_when_idle):
    """Several parties may share a local chain: an idle agent must not close their windows by
    mining, unless asked to (a chain nobody else uses)."""
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 3:
            raise Polls

    monkeypatch.setattr("ape_crowdml.agent.time.sleep", sleep)
    head = chain.blocks.head.number
    agent = Agent(Worker(board, accounts[1], config=config), mine_when_idle=mine_when_idle,
                  log=lambda line: None)
    with pytest.raises(Polls):
        agent.run(poll_seconds=0)
    assert chain.blocks.head.number == head + (3 if mine_when_idle else 0)
