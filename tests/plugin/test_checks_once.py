"""Every check once: a worker's checks before joining are one admission that its join and its
work step share. Counted on ape's test chain for one task: the canary job runs once (not again
before the job), and each call reads the task once besides its simulation."""

from collections import Counter

import pytest

from ape_crowdml.board import Board, Phase
from crowdml_compute import runner
from crowdml_compute.spec import load_spec, save_spec
from ape_crowdml.parties import Requester, Worker
from crowdml_support import DEPOSIT, REWARD, board, config, tiny_spec_file  # noqa: F401 - fixtures


@pytest.fixture
def counted(monkeypatch):
    """Counts of task reads (Board.task) and canary runs (runner.check_canary)."""
    counts = Counter()
    read, canary = Board.task, runner.check_canary

    def task(self, task_id):
        counts["task reads"] += 1
        return read(self, task_id)

    def check_canary(*args, **kwargs):
        counts["canary runs"] += 1
        return canary(*args, **kwargs)

    monkeypatch.setattr(Board, "task", task)
    monkeypatch.setattr(runner, "check_canary", check_canary)
    return counts


def test_one_admission_serves_the_join_and_the_work(board, accounts, config, tmp_path, counted):
    spec_file = tiny_spec_file(tmp_path)
    spec = runner.with_canary(load_spec(spec_file), b"\x07" * 32)
    save_spec(spec, spec_file)
    task = Requester(board, accounts[0], config=config).publish(
        spec_file, reward=REWARD, deposit=DEPOSIT, workers=2, requester_coin=False)
    alice, bob = (Worker(board, accounts[i], config=config) for i in (1, 2))
    counted.clear()
    alice.join(task)
    assert counted == {"task reads": 1, "canary runs": 1}
    bob.join(task)
    assert board.phase(task) == Phase.COMMIT
    counted.clear()
    work = alice.start_work(task)
    assert counted == {"task reads": 1}  # no canary: the join's admission stands
    alice.finish_work(work)
    assert counted == {"task reads": 2}  # the commit's own check, a call apart
    # The control: a worker that did not join here has no admission to reuse, so its checks,
    # canary included, run at its work step.
    counted.clear()
    stranger = Worker(board, accounts[2], config=config.model_copy(
        update={"state_folder": tmp_path / "bob-again"}))
    bob_work = stranger.start_work(task)
    assert counted["canary runs"] == 1
    bob_work.cancel()
