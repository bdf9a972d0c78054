"""The agent completes tasks on its own, in process and through `ape crowdml agent`."""

import os
import re
import time
from pathlib import Path

import pytest
from ape._cli import cli as ape_cli
from ape.logging import logger
from click.testing import CliRunner

from ape_crowdml.agent import Agent
from crowdml_compute.spec import make_spec, save_spec
from ape_crowdml.board import Phase, WorkerStatus
from ape_crowdml.parties import Requester, Worker
from ape_crowdml.render import wei
from crowdml_support import (DEPOSIT, REWARD, step_admitted, tiny_spec_file,
                             board, config)  # noqa: F401 - board, config: fixtures


TEST_JOBS = Path(__file__).parents[1] / "job_files"


def wait_spec(folder: Path, release: Path) -> Path:
    """The spec of a job that ends once `release` exists (tests/job_files/wait_for_file.py)."""
    folder.mkdir(exist_ok=True)
    tiny_spec_file(folder)  # writes the digits data set the spec names
    spec = make_spec(TEST_JOBS / "wait_for_file.py", folder / "digits.npz",
                     {"release": str(release)})
    return save_spec(spec, folder / "wait.json")


def drive(agents, until, *, timeout: float = 120, chain=None):
    """Step the agents until `until()` holds. Jobs run in the background, so an idle round
    waits a little (and mines a block, given `chain`). Each agent's log is a list."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, [agent.log.__self__ for agent in agents]
        if not any([agent.step() for agent in agents]):
            if chain is not None:
                chain.mine(1)
            time.sleep(0.1)


def test_two_agents_complete_a_task_and_share_the_reward(board, accounts, config, tmp_path):
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, requester_coin=False)
    lines = []
    agents = [Agent(Worker(board, accounts[i], config=config), log=lines.append) for i in (1, 2)]
    drive(agents, lambda: all(agent.finished for agent in agents))
    assert board.phase(task) == Phase.AGREED, lines
    assert board.claims(task) == {accounts[i].address: DEPOSIT + REWARD // 2 for i in (1, 2)}
    assert sum("revealed" in line for line in lines) == 2


def test_agents_abort_a_withheld_coin_and_take_the_reward(board, accounts, config, tmp_path, chain):
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, join_blocks=4)
    lines = []
    agents = [Agent(Worker(board, accounts[i], config=config), log=lines.append) for i in (1, 2)]
    for agent in agents:  # both join (their checks run off the loop, the chain waits)
        step_admitted(agent)
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


def test_a_long_job_does_not_make_the_agent_miss_another_tasks_reveal(board, accounts, config,
                                                                      tmp_path):
    """Task B's job is done and committed; task A's job then trains through B's whole reveal
    window (it waits on a file the test creates last). The agent reveals, settles and claims B
    meanwhile, then commits A once its job ends."""
    config = config.model_copy(update={"jobs_folder": [TEST_JOBS]})
    requester = Requester(board, accounts[0], config=config)
    coworker = Worker(board, accounts[2], config=config)
    release_a = tmp_path / "release-a"
    (tmp_path / "release-b").touch()

    def publish(name: str, release: Path) -> int:
        spec = wait_spec(tmp_path / name, release)
        task = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                                 commit_blocks=30, reveal_blocks=4, requester_coin=False)
        coworker.join(task)
        return task

    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    me = accounts[1].address
    task_b = publish("b", tmp_path / "release-b")
    drive([agent], lambda: board.worker_status(task_b, me) == WorkerStatus.COMMITTED)
    task_a = publish("a", release_a)
    drive([agent], lambda: f"task {task_a}: job started" in lines)

    coworker.work(task_b)  # B's reveal window opens, and lasts 4 blocks
    reveal_deadline = board.task(task_b).deadline
    drive([agent], lambda: board.worker_status(task_b, me) == WorkerStatus.REVEALED)
    assert board.head <= reveal_deadline
    coworker.reveal(task_b)
    drive([agent], lambda: task_b in agent.finished)
    assert board.claims(task_b) == {me: DEPOSIT + REWARD // 2}
    assert not agent._jobs[task_a].done, "A's job was to run through all of B's reveal window"
    assert board.worker_status(task_a, me) == WorkerStatus.JOINED

    release_a.touch()
    drive([agent], lambda: board.worker_status(task_a, me) == WorkerStatus.COMMITTED)
    coworker.work(task_a)
    drive([agent], lambda: board.worker_status(task_a, me) == WorkerStatus.REVEALED)
    actions_on_a = [line.split(": ", 1)[1].split(" 0x")[0] for line in lines
                    if line.startswith(f"task {task_a}: ")]
    assert actions_on_a == ["joined", "job started", "committed to", "revealed"]


def test_a_job_still_running_when_its_commit_window_closes_is_stopped(board, accounts, config,
                                                                      tmp_path, chain):
    config = config.model_copy(update={"jobs_folder": [TEST_JOBS]})
    spec = wait_spec(tmp_path, tmp_path / "never")
    task = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2, commit_blocks=5, requester_coin=False)
    Worker(board, accounts[2], config=config).join(task)
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    drive([agent], lambda: f"task {task}: job started" in lines)
    work = agent._jobs[task]
    drive([agent], lambda: task not in agent._jobs, chain=chain)
    assert work.done
    assert (f"task {task}: job stopped: the commit window closed before it was committed"
            in lines)
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.JOINED


def test_an_interrupted_agent_stops_its_running_job(board, accounts, config, tmp_path,
                                                    monkeypatch):
    config = config.model_copy(update={"jobs_folder": [TEST_JOBS]})
    task = Requester(board, accounts[0], config=config).publish(
        wait_spec(tmp_path, tmp_path / "never"), reward=REWARD, deposit=DEPOSIT, workers=2,
        requester_coin=False)
    Worker(board, accounts[2], config=config).join(task)
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    drive([agent], lambda: f"task {task}: job started" in lines)
    work = agent._jobs[task]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("ape_crowdml.agent.time.sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        agent.run(poll_seconds=0)
    assert work.done and not agent._jobs  # the job's process ended with the agent
    assert lines[-1] == f"task {task}: job stopped"


def test_a_hostile_task_never_holds_the_agents_other_tasks(board, accounts, config, tmp_path):
    """A requester publishes a task whose data URI trickles bytes forever (2 wei of reward).
    The agent's checks of it run off its loop: meanwhile it reveals on its real task, and once
    the checks outlast `check_seconds` the hostile task is refused and forgotten."""
    from test_io_limits import serve

    me = accounts[1]
    patient = config.model_copy(update={"worker": config.worker.model_copy(
        update={"fetch_seconds": 20.0, "check_seconds": 3.0})})
    worker = Worker(board, me, config=patient)
    requester = Requester(board, accounts[0], config=config)
    real = requester.publish(tiny_spec_file(tmp_path / "real"), reward=REWARD, deposit=DEPOSIT,
                             workers=2, requester_coin=False)
    worker.join(real)
    board.join(accounts[2], real)
    worker.work(real)
    board.commit(accounts[2], real, b"\x01" * 32)
    assert board.phase(real) == Phase.REVEAL

    server, url = serve(b"", trickle=True)
    try:
        folder = tmp_path / "hostile"
        folder.mkdir()
        tiny_spec_file(folder)
        # Data of its own (a cached copy of a known digest would never be fetched again).
        import numpy as np

        with np.load(folder / "digits.npz") as digits:
            arrays = dict(digits)
        with open(folder / "own.npz", "wb") as f:
            np.savez(f, **arrays, salt=np.frombuffer(os.urandom(32), np.uint8))
        hostile_spec = make_spec("jobs/train_classifier.py", folder / "own.npz",
                                 {"epochs": 1}, data_uri=url)
        spec_file = save_spec(hostile_spec, folder / "spec.json")
        hostile = board.publish(accounts[3], spec=hostile_spec.digest(),
                                data=bytes.fromhex(hostile_spec.data_digest[2:]), workers=2,
                                deposit=DEPOSIT, reward=2, join_blocks=20, commit_blocks=20,
                                reveal_blocks=20, spec_uri=str(spec_file))
        lines = []
        agent = Agent(worker, mine_when_idle=False, log=lines.append)
        started = time.monotonic()
        agent.step()
        assert time.monotonic() - started < 2.0, lines  # not held by the trickling server
        assert f"task {real}: revealed" in " ".join(lines) and agent.admitting
        while agent.admitting or hostile in agent._watching:
            assert time.monotonic() - started < 30, lines
            time.sleep(0.2)
            agent.step()
        assert lines[-1] == (f"task {hostile}: not joining: its checks did not end within 3 s "
                             "(this worker's check_seconds)") or "was not read" in lines[-1]
        assert board.worker_status(hostile, me.address) == WorkerStatus.NONE
    finally:
        server.shutdown()


def test_a_missing_salt_is_said_once_not_at_every_poll(board, accounts, config, tmp_path):
    """An agent started where its salt is not (another state folder) cannot reveal: it says so
    once for the task, not once per poll."""
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
        requester_coin=False)
    worker = Worker(board, accounts[1], config=config)
    worker.join(task)
    board.join(accounts[2], task)
    worker.work(task)
    board.commit(accounts[2], task, b"\x01" * 32)
    assert board.phase(task) == Phase.REVEAL
    elsewhere = config.model_copy(update={"state_folder": tmp_path / "elsewhere"})
    lines = []
    agent = Agent(Worker(board, accounts[1], config=elsewhere), mine_when_idle=False,
                  log=lines.append)
    for _ in range(5):
        agent.step()
    missing = [line for line in lines if "no stored salt" in line]
    assert len(missing) == 1, lines


def test_an_unwritable_state_folder_is_said_once_and_the_job_is_not_rerun(
        board, accounts, config, tmp_path, monkeypatch):
    """The worker's state folder refuses writes once its job has started (made immutable, a
    full disk): the result cannot be stored, so nothing is committed; the agent says so once,
    naming the folder, keeps the job's result rather than rerunning the job, and commits and
    finishes the task once the folder takes writes again."""
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, requester_coin=False)
    helper = Worker(board, accounts[2], config=config)
    helper.join(task)
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    drive([agent], lambda: f"task {task}: job started" in lines)
    # sqlite's own refusal, through the store's real write path (root ignores file modes).
    database = agent.worker.store._connection(create=True)
    database.execute("PRAGMA query_only = ON")
    drive([agent], lambda: agent._jobs[task].done and any("cannot write" in line
                                                          for line in lines))
    for _ in range(20):  # many polls while the folder stays read-only
        agent.step()
    refusals = [line for line in lines if "cannot write" in line]
    assert refusals == [f"task {task}: cannot write the state folder {config.state_folder} "
                        "(attempt to write a readonly database): make it writable (or free "
                        "its disk); nothing that needs it is sent until then"]
    assert lines.count(f"task {task}: job started") == 1
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.JOINED
    database.execute("PRAGMA query_only = OFF")
    drive([agent], lambda: board.worker_status(task, accounts[1].address)
          == WorkerStatus.COMMITTED)
    assert lines.count(f"task {task}: job started") == 1  # the kept result, not a rerun
    helper.work(task)
    drive([agent], lambda: board.worker_status(task, accounts[1].address)
          == WorkerStatus.REVEALED)
    helper.reveal(task)
    drive([agent], lambda: agent.finished == [task])
    assert board.phase(task) == Phase.AGREED, lines



def test_a_task_refused_for_a_reason_the_worker_can_fix_is_checked_again(
        board, accounts, config, tmp_path, monkeypatch):
    """No job environment yet: the agent says so once and keeps the task (in memory and in
    its store), checks it again later, and an agent restarted once the environment is built
    joins it. (A refusal the worker cannot fix drops the task for good: the hostile test.)"""
    from crowdml_compute import jobenv

    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, requester_coin=False)
    built = jobenv.environment_folder
    monkeypatch.setattr(jobenv, "environment_folder", lambda stack: tmp_path / "not-built")
    lines = []
    worker = Worker(board, accounts[1], config=config)
    agent = Agent(worker, log=lines.append)
    for _ in range(3):
        step_admitted(agent)
    refusals = [line for line in lines if "not joining" in line]
    assert refusals == [f"task {task}: not joining for now: job stack jax0.11.2-py3.12 has no "
                        f"environment here ({tmp_path / 'not-built'}/bin/python is missing); "
                        "build it with `ape crowdml job-env create jax0.11.2-py3.12` or name "
                        "its python under `crowdml: job_envs:` (checked again every 60 s)"]
    assert task in worker.store.agent_scan(*agent._scan_key)[1]  # still followed after a restart
    agent._recheck_at[task] = 0.0  # RECHECK_SECONDS later
    step_admitted(agent)
    assert agent._recheck_at[task] > 0  # checked again, still refused...
    assert len([line for line in lines if "not joining" in line]) == 1  # ...and not said again
    monkeypatch.setattr(jobenv, "environment_folder", built)  # `job-env create` ran
    restarted = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    step_admitted(restarted)
    assert lines[-1] == f"task {task}: joined"
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.JOINED
