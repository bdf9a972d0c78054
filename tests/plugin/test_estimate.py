"""How long a job will take here, from its canary, and the joins it rules out."""

import pytest

from ape_crowdml.errors import PolicyRefused
from ape_crowdml.estimate import block_seconds, job_estimate
from ape_crowdml.parties import Requester, Worker
from crowdml_support import DEPOSIT, REWARD, TINY_HPARAMS, board, config  # noqa: F401
from crowdml_compute.data import export_digits
from crowdml_compute.runner import with_canary
from crowdml_compute.spec import make_spec


def test_the_estimate_is_the_canarys_fixed_cost_plus_its_steady_rate():
    # Three canary epochs of 3 steps ended 5.0 s, 5.6 s and 7.9 s (the last with the final
    # evaluation's compilation) after start; the process took 9 s.
    timing = {"epoch_ends": [5.0, 5.6, 7.9], "steps_per_epoch": 3, "batches_in_data": 22}
    estimate = job_estimate({"epochs": 10}, timing, 9.0)
    assert estimate.per_step == pytest.approx(0.2) and estimate.steps == 220
    assert estimate.fixed == pytest.approx(9.0 - 9 * 0.2)
    assert estimate.seconds == pytest.approx(7.2 + 44.0)
    capped = job_estimate({"epochs": 10, "steps_per_epoch": 5}, timing, 9.0)
    assert capped.steps == 50
    # Not enough to say: fewer canary epochs (compilation in the first, evaluation in the
    # last), no step counts, no epochs.
    assert job_estimate({"epochs": 10}, {**timing, "epoch_ends": [5.0, 5.6]}, 9.0) is None
    assert job_estimate({"epochs": 10}, {"epoch_ends": [5.0, 5.6, 7.9]}, 9.0) is None
    assert job_estimate({"subset_size": 100}, timing, 9.0) is None


def test_a_commit_window_the_job_cannot_make_is_refused_before_the_deposit(
        board, accounts, config, tmp_path, chain):
    assert block_seconds(chain) is None  # ape's test chain mines on demand: no block time
    export_digits(tmp_path / "digits.npz")
    spec = with_canary(make_spec("train_classifier", tmp_path / "digits.npz",
                                 {**TINY_HPARAMS, "epochs": 20}), bytes(32))
    task_id = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2, commit_blocks=10)
    worker = Worker(board, accounts[1], config=config)
    task, source, sink, _ = worker.admission_facts(task_id, spec)
    # 10 blocks of 0.2 s: 2 s, less than any job's start-up.
    with pytest.raises(PolicyRefused, match=r"the job should take about \d+ s here \(220 steps "
                                            r".* more than 80% of its commit window \(10 blocks "
                                            r"of about 0.2 s\)"):
        worker.admit(task, source, sink, block_time=0.2)
    # 10 blocks of an hour: plenty.
    assert worker.admit(task, source, sink, block_time=3600.0)[1] == spec
    assert board.task(task_id).joined == 0
