"""Upgrades with tasks in flight: a spec's profile pins the compute code's hash, which an upgrade
changes. `--drain` finishes the tasks held and joins none; an upgraded worker holding a task
joined under the old code is told, before its commit, which version to reinstall.

The upgrade is what `pip install -U ape-crowdml` changes for the next process: this install's
compute code hash, its install digest (the code and the profiles' and stacks' data files) and
version (`crowdml_compute.profile.compute_code_digest`, `install_digest`,
`ape_crowdml.parties.crowdml_version`), patched after the join; the join itself, the record it
keeps and the spec on chain are the real ones.
"""

import re

import pytest
from ape._cli import cli as ape_cli
from ape.logging import logger
from click.testing import CliRunner

from ape_crowdml.agent import Agent
from ape_crowdml.board import Phase, WorkerStatus
from ape_crowdml.errors import UpgradedSinceJoin
from ape_crowdml.parties import Requester, Worker, crowdml_version
from crowdml_compute.profile import compute_code_digest, install_digest
from crowdml_support import (DEPOSIT, REWARD, tiny_spec_file,
                             board, config)  # noqa: F401 - board, config: fixtures
from test_agent import drive

# Its behaviour depends on the node: `make test-anvil` runs it on anvil too.
pytestmark = pytest.mark.anvil

UPGRADED_CODE = "0x" + "ab" * 32
UPGRADED_VERSION = "0.2.0"


class Polls(Exception):
    """Ends an agent's run loop that would otherwise never end."""


def bounded_polls(monkeypatch, polls: int = 100) -> None:
    """The agent's idle sleeps, counted: a run that should have ended fails the test."""
    count = []

    def sleep(seconds):
        count.append(seconds)
        if len(count) >= polls:
            raise Polls

    monkeypatch.setattr("ape_crowdml.agent.time.sleep", sleep)


def upgrade(monkeypatch, code: bool = True) -> None:
    """What an upgrade changes; with `code=False`, a release that changes only data files (a
    profile's pin): the compute code's hash stays, the install's digest moves."""
    if code:
        monkeypatch.setattr("crowdml_compute.profile.compute_code_digest", lambda: UPGRADED_CODE)
    monkeypatch.setattr("crowdml_compute.profile.install_digest", lambda: UPGRADED_CODE)
    monkeypatch.setattr("ape_crowdml.parties.crowdml_version", lambda: UPGRADED_VERSION)


def run_agent(networks, project, config, board, *args) -> tuple[int, list[str]]:
    """`ape crowdml agent` as TEST::1 at `-v INFO`: its exit code and its lines."""
    overrides = {"crowdml": {"state_folder": str(config.state_folder)}}
    if networks.provider.name == "foundry":
        overrides["foundry"] = {"host": networks.provider.uri}
    level = logger.level  # the suite may run quieter (`ape test -q`)
    with project.temp_config(**overrides):
        try:
            result = CliRunner().invoke(ape_cli, [
                "crowdml", "agent", *args, "--poll", "0", "--board", board.address,
                "-v", "INFO", "--account", "TEST::1",
                "--network", networks.provider.network_choice], catch_exceptions=False)
        finally:
            logger.set_level(level)
    return result.exit_code, result.output.splitlines()


@pytest.fixture
def joined_task(board, accounts, config, tmp_path):
    """A task in its commit window: TEST::1 joined it through `Worker.join` (which records the
    version and compute code), a co-worker filled the roster."""
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
        requester_coin=False)
    Worker(board, accounts[1], config=config).join(task)
    board.join(accounts[2], task)
    assert board.phase(task) == Phase.COMMIT
    return task


def test_a_draining_agent_finishes_its_task_joins_no_new_one_and_stops(
        board, accounts, config, tmp_path, monkeypatch):
    requester = Requester(board, accounts[0], config=config)
    coworker = Worker(board, accounts[2], config=config)
    me = accounts[1].address
    spec = tiny_spec_file(tmp_path)
    held = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                             requester_coin=False)
    Worker(board, accounts[1], config=config).join(held)
    coworker.join(held)
    still_open = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2)
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), drain=True, log=lines.append)
    coworker.work(held)
    drive([agent], lambda: board.worker_status(held, me) == WorkerStatus.REVEALED)
    coworker.reveal(held)
    bounded_polls(monkeypatch)
    agent.run(poll_seconds=0)
    assert board.phase(held) == Phase.AGREED, lines
    assert board.claims(held) == {me: DEPOSIT + REWARD // 2}
    assert lines[-1] == "no live tasks: safe to upgrade"
    assert board.worker_status(still_open, me) == WorkerStatus.NONE
    assert board.phase(still_open) == Phase.JOINING
    assert not any(f"task {still_open}" in line for line in lines), lines
    # Still followed: the upgraded agent joins it.
    assert still_open in agent.worker.store.agent_scan(*agent._scan_key)[1]


def test_a_drain_with_no_live_task_exits_at_once(board, accounts, config, tmp_path, networks,
                                                 project, monkeypatch):
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2)
    nonce = accounts[1].nonce
    bounded_polls(monkeypatch, polls=1)
    code, lines = run_agent(networks, project, config, board, "--drain")
    assert code == 0, lines
    assert re.search(r" INFO: +no live tasks: safe to upgrade$", lines[-1]), lines
    assert accounts[1].nonce == nonce
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.NONE


def test_an_upgraded_worker_is_told_to_reinstall_before_its_commit(
        board, accounts, config, networks, project, joined_task, monkeypatch):
    task, me = joined_task, accounts[1]
    joined_code, joined_version = install_digest(), crowdml_version()
    upgrade(monkeypatch)
    refusal = (f"task {task} was joined under compute code {joined_code[:10]}… (ape-crowdml "
               f"{joined_version}), this install runs {UPGRADED_CODE[:10]}… (ape-crowdml "
               f"{UPGRADED_VERSION}) and would refuse its job: reinstall "
               f"ape-crowdml=={joined_version} and run `ape crowdml agent --drain` with it to "
               f"commit before block {board.task(task).deadline}, or the deposit is lost")
    nonce, balance = me.nonce, me.balance
    bounded_polls(monkeypatch, polls=1)  # an agent that started would run on

    code, lines = run_agent(networks, project, config, board)
    said = [line for line in lines if "INFO" not in line]
    assert code == 1 and len(said) == 1, lines
    assert re.fullmatch(r"ERROR: +" + re.escape(refusal), said[0]), said
    with pytest.raises(UpgradedSinceJoin) as refused:
        Agent(Worker(board, me, config=config), log=print)
    assert str(refused.value) == refusal
    with pytest.raises(UpgradedSinceJoin) as refused:  # the commit path, before the job
        Worker(board, me, config=config).work(task)
    assert str(refused.value) == refusal

    # Draining, it says so once and carries the rest; this task's job never starts.
    lines = []
    agent = Agent(Worker(board, me, config=config), drain=True, log=lines.append)
    for _ in range(5):
        agent.step()
    assert lines == [refusal]
    assert task in agent.live
    assert (me.nonce, me.balance) == (nonce, balance)
    assert board.worker_status(task, me.address) == WorkerStatus.JOINED


def test_an_upgrade_of_data_files_alone_is_refused_too(board, accounts, config, joined_task,
                                                      monkeypatch):
    """A release that changes only a profile's data (a pin, a flag) keeps the compute code's
    hash but changes what the worker accepts: the join's record catches it."""
    joined = install_digest()
    upgrade(monkeypatch, code=False)
    assert compute_code_digest() != UPGRADED_CODE  # the code's hash did not move
    with pytest.raises(UpgradedSinceJoin, match=f"joined under compute code {joined[:10]}"):
        Worker(board, accounts[1], config=config).work(joined_task)


def test_a_task_joined_without_a_record_is_judged_by_its_spec(board, accounts, config, tmp_path,
                                                              monkeypatch):
    """Joined by a crowdml that kept no record (or from another state folder): the spec's
    profile names the code, the version to reinstall is unknown."""
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
        requester_coin=False)
    board.join(accounts[1], task)
    board.join(accounts[2], task)
    joined_code = compute_code_digest()
    upgrade(monkeypatch)
    nonce = accounts[1].nonce
    with pytest.raises(UpgradedSinceJoin) as refused:
        Worker(board, accounts[1], config=config).work(task)
    assert str(refused.value) == (
        f"task {task} was joined under compute code {joined_code[:10]}…, this install runs "
        f"{UPGRADED_CODE[:10]}… (ape-crowdml {UPGRADED_VERSION}) and would refuse its job: "
        "reinstall the crowdml version that joined it and run its agent to commit before "
        f"block {board.task(task).deadline}, or the deposit is lost")
    assert accounts[1].nonce == nonce
    # Judged by its spec, a profile this install changed is refused too, the code unchanged.
    monkeypatch.undo()
    from crowdml_compute import profile as profiles

    spec = Worker(board, accounts[1], config=config).spec_of(task)
    changed = spec.profile.model_copy(update={"xla_flags": ("--changed",)})
    monkeypatch.setitem(profiles.PROFILES, spec.profile.name, changed)
    with pytest.raises(UpgradedSinceJoin, match="and profile cpu-portable as this install no "
                                                "longer has it"):
        Worker(board, accounts[1], config=config).work(task)


def test_without_an_upgrade_the_same_task_is_committed(board, accounts, config, joined_task):
    """The control of the refusals above: the same task and worker, the same code as at the
    join."""
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    drive([agent], lambda: board.worker_status(joined_task, accounts[1].address)
          == WorkerStatus.COMMITTED)
    assert lines[0] == f"task {joined_task}: job started", lines
    assert lines[1].startswith(f"task {joined_task}: committed to 0x"), lines
