"""The Python API end to end on the connected chain, and the store-before-commit rule."""

import sqlite3
import subprocess
import sys
import types

import pytest

from ape_crowdml.agent import Agent
from ape_crowdml.board import Phase, WorkerStatus, commitment
from ape_crowdml.config import CrowdmlConfig
from ape_crowdml.errors import CanaryMismatch, MissingSecret, PolicyRefused, SpecError, TaskRejected
from ape_crowdml.parties import Requester, Worker, find_board
from crowdml_support import (DEPOSIT, REWARD, isolated_config, tiny_spec_file,
                             board, config)  # noqa: F401 - board, config: fixtures


def test_config_is_registered_with_defaults(project):
    config = project.config.get_config("crowdml")
    assert isinstance(config, CrowdmlConfig)
    assert config.worker.accept_jobs == []
    assert config.artifact_url().endswith("artifacts")


def test_deployed_board_is_found_again(board, config):
    assert find_board(config=config).address == board.address


@pytest.mark.parametrize("warm", [True, False], ids=["warm jobs", "cold jobs"])
def test_full_task_through_the_api(board, accounts, config, tmp_path, warm):
    """This project runs warm jobs (ape-config.yaml); a worker's default is a fresh process per
    job: both are played."""
    config = config.model_copy(update={"worker": config.worker.model_copy(
        update={"warm_jobs": warm})})
    spec = tiny_spec_file(tmp_path)
    requester = Requester(board, accounts[0], config=config)
    workers = [Worker(board, accounts[i], config=config) for i in (1, 2)]
    task = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2)
    for w in workers:
        w.join(task)
    assert board.phase(task) == Phase.AWAITING_COIN
    requester.release_coin(task)
    results = {w.work(task) for w in workers}
    assert len(results) == 1, "both workers must get the same digest from the same coin"
    for w in workers:
        w.reveal(task)
    assert requester.settle(task) == Phase.AGREED
    for w in workers:
        assert w.claim(task) == DEPOSIT + REWARD // 2
    assert requester.owed(task) == 0
    params = requester.fetch(task)
    assert params["params"]["Dense_0"]["kernel"].shape == (64, 16)


def test_salt_is_on_disk_before_commit_is_sent(board, accounts, config, tmp_path, monkeypatch):
    spec = tiny_spec_file(tmp_path)
    requester = Requester(board, accounts[0], config=config)
    worker = Worker(board, accounts[1], config=config)
    task = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                             requester_coin=False)
    worker.join(task)
    board.join(accounts[2], task)
    seen = []
    original = type(board).commit

    def commit_checking_disk(self, sender, task_id, commitment_):
        # A second connection sees only what the first has committed to the file.
        with sqlite3.connect(worker.store.path) as db:
            seen.extend(db.execute("SELECT task_id, account, salt FROM results").fetchall())
        return original(self, sender, task_id, commitment_)

    monkeypatch.setattr(type(board), "commit", commit_checking_disk)
    worker.commit_result(task, b"\x11" * 32, b"artifact")
    assert seen == [(task, accounts[1].address, worker.store.result(
        board.chain_id, board.address, task, accounts[1].address).salt)]
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.COMMITTED


def two_worker_task(board, accounts, config, tmp_path):
    """A chain-coin task whose roster (accounts 1 and 2) is full: the commit phase is open."""
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, requester_coin=False)
    board.join(accounts[1], task)
    board.join(accounts[2], task)
    return task


def test_reveal_without_stored_salt_is_refused(board, accounts, config, tmp_path):
    task = two_worker_task(board, accounts, config, tmp_path)
    for i in (1, 2):  # all committed: the reveal is due
        Worker(board, accounts[i], config=config).commit_result(task, b"\x11" * 32, b"artifact")
    machine_lost_its_state = isolated_config(tmp_path / "new-machine")
    with pytest.raises(MissingSecret, match="no stored salt for task"):
        Worker(board, accounts[1], config=machine_lost_its_state).reveal(task)


def test_a_trivial_result_is_never_committed(board, accounts, config, tmp_path):
    task = two_worker_task(board, accounts, config, tmp_path)
    worker = Worker(board, accounts[1], config=config)
    with pytest.raises(TaskRejected, match="common-knowledge set E_ck"):
        worker.commit_result(task, board.task(task).spec, b"artifact")
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.JOINED
    assert worker.store.result(board.chain_id, board.address, task, accounts[1].address) is None


def test_a_committed_opening_is_never_replaced(board, accounts, config, tmp_path):
    task = two_worker_task(board, accounts, config, tmp_path)
    worker = Worker(board, accounts[1], config=config)
    worker.commit_result(task, b"\x11" * 32, b"artifact")
    key = (board.chain_id, board.address, task, accounts[1].address)
    opening = worker.store.result(*key)
    with pytest.raises(TaskRejected, match="already committed"):
        worker.commit_result(task, b"\x22" * 32, b"other artifact")
    assert worker.store.result(*key) == opening


def fake_jobs(monkeypatch, worker, start):
    """The worker's jobs replaced: `start(task_id)` stands for `start_work`, and each job is
    done at once, its commit skipped."""
    monkeypatch.setattr(worker, "start_work",
                        lambda task_id: start(task_id) and types.SimpleNamespace(done=True))
    monkeypatch.setattr(worker, "finish_work", lambda work: b"\x33" * 32)


def test_agent_reveals_before_it_starts_another_job(board, accounts, config, tmp_path, monkeypatch):
    waiting = two_worker_task(board, accounts, config, tmp_path / "b")  # the lower id
    revealing = two_worker_task(board, accounts, config, tmp_path / "a")
    me = Worker(board, accounts[1], config=config)
    me.commit_result(revealing, b"\x11" * 32, b"artifact")
    board.commit(accounts[2], revealing, commitment(b"\x11" * 32, b"\x01" * 32, accounts[2].address, revealing))
    assert board.phase(revealing) == Phase.REVEAL and board.phase(waiting) == Phase.COMMIT

    started = []

    def work(task_id):
        started.append((task_id, board.worker_status(revealing, accounts[1].address)))
        return b"\x33" * 32

    fake_jobs(monkeypatch, me, work)
    agent = Agent(me, mine_when_idle=False, log=lambda line: None)
    assert agent.step()
    assert started == [(waiting, WorkerStatus.REVEALED)]


def test_agent_outlives_a_failing_node_call(board, accounts, config, tmp_path, monkeypatch):
    broken = two_worker_task(board, accounts, config, tmp_path / "a")
    other = two_worker_task(board, accounts, config, tmp_path / "b")
    me = Worker(board, accounts[1], config=config)
    phase = type(board).phase

    def flaky_phase(self, task_id):
        if task_id == broken:
            raise ConnectionError("node went away")
        return phase(self, task_id)

    monkeypatch.setattr(type(board), "phase", flaky_phase)
    fake_jobs(monkeypatch, me, lambda task_id: started.append(task_id) or b"\x33" * 32)
    started, lines = [], []
    Agent(me, mine_when_idle=False, log=lines.append).step()
    assert started == [other]
    assert f"task {broken}: ConnectionError: node went away" in lines


def test_job_outside_the_allowlist_is_refused_before_deposit(board, accounts, config, tmp_path):
    spec = tiny_spec_file(tmp_path)
    strict = config.model_copy(update={"worker": config.worker.model_copy(
        update={"accept_jobs": ["evaluate_classifier.py"]})})
    task = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2)
    before = accounts[1].balance
    with pytest.raises(PolicyRefused, match="not on this worker's allowlist"):
        Worker(board, accounts[1], config=strict).join(task)
    assert accounts[1].balance == before


def test_spec_with_another_digest_is_refused(board, accounts, config, tmp_path):
    spec = tiny_spec_file(tmp_path)
    task = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2)
    (tmp_path / "other").mkdir()
    other = tiny_spec_file(tmp_path / "other", epochs=2)
    with pytest.raises(SpecError, match="get the requester's spec file"):
        Worker(board, accounts[1], config=config).join(task, other)


def test_starting_ape_with_the_plugin_does_not_import_jax(project):
    script = ("import sys; from ape._cli import cli; from click.testing import CliRunner; "
              "from ape import config; config.get_config('crowdml'); "
              "r = CliRunner().invoke(cli, ['crowdml', '--help']); "
              "print(r.exit_code, 'jax' in sys.modules, 'flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=project.path, check=True).stdout.split()
    assert out == ["0", "False", "False"]



def test_a_job_that_keeps_failing_does_not_hold_up_the_others(board, accounts, config, tmp_path,
                                                              monkeypatch):
    failing = two_worker_task(board, accounts, config, tmp_path / "a")  # its window closes first
    other = two_worker_task(board, accounts, config, tmp_path / "b")
    me = Worker(board, accounts[1], config=config)
    started = []

    def work(task_id):
        started.append(task_id)
        if task_id == failing:
            raise CanaryMismatch("this machine does not reproduce the canary")
        return b"\x33" * 32

    fake_jobs(monkeypatch, me, work)
    agent = Agent(me, mine_when_idle=False, log=lambda line: None)
    for _ in range(3):
        agent.step()
    assert started[:2] == [failing, other] and started.count(failing) == 1
