"""A warm job process (crowdml_compute/warm.py) gives every job the digest a cold, fresh process gives:
specs of two jobs, and one spec with two coins, run one after another in one warm process."""

import time

import pytest

from crowdml_compute.data import export_digits
from crowdml_compute.runner import run_job
from crowdml_compute.spec import make_spec
from crowdml_compute.warm import WarmPool
from ape_crowdml.errors import CrowdmlError
from crowdml_support import TINY_HPARAMS

COINS = [bytes([1]) * 32, bytes([2]) * 32]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warm")
    data = folder / "digits.npz"
    export_digits(data)
    return [make_spec("train_classifier", data, TINY_HPARAMS),
            make_spec("train_classifier", data, {**TINY_HPARAMS, "hidden": [8]})]


@pytest.fixture(scope="module")
def cold(specs):
    """Each (spec, coin)'s digest from a fresh process, as a worker without warm jobs runs it."""
    return {(i, coin): run_job(spec, coin).digest for i, spec in enumerate(specs) for coin in COINS}


@pytest.fixture
def pool(tmp_path):
    pool = WarmPool(tmp_path / "cache")
    yield pool
    pool.close()


def test_a_warm_process_gives_each_job_the_cold_digest(specs, cold, pool):
    warm = {(i, coin): pool.start(spec, coin).result().digest
            for i, spec in enumerate(specs) for coin in COINS}
    assert warm == cold
    assert len(set(cold.values())) == len(cold)  # other hparams or another coin: another digest


def test_a_failing_job_leaves_the_warm_process_serving(specs, cold, pool):
    wrong = specs[0].model_copy(update={"data_digest": "0x" + "00" * 32})
    with pytest.raises(CrowdmlError, match="keccak256"):
        pool.start(wrong, COINS[0]).result()
    assert pool.start(specs[0], COINS[0]).result().digest == cold[0, COINS[0]]


def test_a_cancelled_warm_job_stops_and_the_next_starts_afresh(specs, cold, pool):
    job = pool.start(specs[0], COINS[0])
    job.cancel()
    assert not job.running
    assert pool.start(specs[0], COINS[1]).result().digest == cold[0, COINS[1]]


def test_jobs_at_once_run_in_children_of_their_own_and_a_cancel_stops_only_its_own(specs, cold,
                                                                                 pool):
    """Workers of one process share the pool (WarmPool.shared): two jobs at once get a child
    each, and one worker's cancel leaves the other's job running to its cold digest."""
    first, second = pool.start(specs[0], COINS[0]), pool.start(specs[1], COINS[1])
    assert first._process is not second._process
    first.cancel()
    assert second.result().digest == cold[1, COINS[1]]
    # the surviving child is idle again: the next job reuses it, no third child starts
    third = pool.start(specs[0], COINS[1])
    assert third._process is second._process
    assert third.result().digest == cold[0, COINS[1]]


def test_the_shared_pool_is_one_per_cache_folder(tmp_path):
    assert WarmPool.shared(tmp_path / "a") is WarmPool.shared(tmp_path / "a")
    assert WarmPool.shared(tmp_path / "a") is not WarmPool.shared(tmp_path / "b")


def test_cancelling_a_job_that_ended_leaves_the_child_to_its_next_job(specs, cold, pool):
    """The agent cancels jobs whose result it drops (a window that closed), finished or not:
    a finished job's child may run another worker's job by then, which must run on."""
    first = pool.start(specs[0], COINS[0])
    while first.running:
        time.sleep(0.05)
    second = pool.start(specs[1], COINS[0])  # the idle child takes it
    assert second._process is first._process
    first.cancel()
    assert second.result().digest == cold[1, COINS[0]]


def test_a_warm_child_compiles_a_program_once_and_its_programs_go_with_it(specs, cold, pool):
    """The child keeps its compiled programs in its own folder: the same spec with another coin
    compiles nothing new (and gives the cold digest), other hparams compile their own; when the
    child stops, the folder goes."""
    assert pool.start(specs[0], COINS[0]).result().digest == cold[0, COINS[0]]
    [[child]] = pool._children.values()
    programs = child.stderr.parent / "programs"

    def compiled() -> set[str]:
        return {path.name for path in programs.iterdir() if path.name.endswith("-cache")}

    first = compiled()
    assert first  # the train epoch, the init, the evaluation, …
    assert pool.start(specs[0], COINS[1]).result().digest == cold[0, COINS[1]]
    assert compiled() == first
    assert pool.start(specs[1], COINS[0]).result().digest == cold[1, COINS[0]]
    assert compiled() > first
    pool.close()
    assert not programs.exists()


def test_a_warm_childs_programs_folder_is_emptied_past_its_limit(tmp_path):
    from crowdml_compute.warm import _keep_under

    (tmp_path / "a-cache").write_bytes(b"x" * 600)
    _keep_under(tmp_path, 1000)
    assert [path.name for path in tmp_path.iterdir()] == ["a-cache"]
    (tmp_path / "b-cache").write_bytes(b"x" * 600)
    _keep_under(tmp_path, 1000)
    assert list(tmp_path.iterdir()) == []


def test_a_float_spec_run_again_from_the_programs_folder_gives_the_cold_digest(specs, pool):
    """Float arithmetic (cpu-exact: oneDNN's sums, pinned): the second run of the same spec in
    one warm child loads the programs the first compiled; both give the cold digest."""
    spec = make_spec("train_classifier", specs[0].data_uri,
                     {**TINY_HPARAMS, "arithmetic": "float"}, profile="cpu-exact")
    cold = run_job(spec, COINS[0]).digest
    assert [pool.start(spec, COINS[0]).result().digest for _ in range(2)] == [cold, cold]
