"""The stranger: a worker that shares nothing with the requester but the chain and the stores
the chain names. In an empty folder outside the repository, with the package installed alone
from its wheel (no jobs/ folder, no repository on the path) and an ape-config.yaml holding only
the board's address and its job environment (crowdml_compute/jobenv.py), an `ape crowdml agent` process finds the task on the board, fetches its
spec at the URI of the Published event, the data and the shipped job by digest, works, reveals,
uploads the result sealed to the requester's key into its own bucket (its own S3 server and key
pair), announces the URI and claims. The requester, holding no credentials of anyone's, fetches
and opens it.

Two processes need one chain, so this runs on anvil only (`--network ethereum:local:foundry`).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
import yaml

from ape_crowdml.board import Phase, WorkerStatus
from crowdml_compute import jobenv
from crowdml_compute.digest import decode_result, keccak_digest
from ape_crowdml.delivery import pack, seal
from ape_crowdml.parties import Requester, Worker, deploy_board
from crowdml_support import DEPOSIT, REWARD, isolated_config, sealed_spec
from store_server import public_bucket
from test_agent_recovery import anvil  # noqa: F401 - fixture

# Its behaviour depends on the node: `make test-anvil` runs it on anvil too.
pytestmark = pytest.mark.anvil

APE = str(Path(sys.executable).parent / "ape")


def wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None and not condition():
            pytest.fail(f"agent exited ({process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.5)


def test_a_stranger_completes_a_task_found_from_the_chain_alone(
        accounts, tmp_path, anvil, installed_wheel):
    with public_bucket(tmp_path / "s3-requester") as own, \
            public_bucket(tmp_path / "s3-stranger") as stranger_bucket, \
            public_bucket(tmp_path / "s3-coworker") as coworker_bucket:
        play_the_stranger(accounts, tmp_path, anvil, installed_wheel, own, stranger_bucket,
                          coworker_bucket)


def play_the_stranger(accounts, tmp_path, anvil, installed_wheel, own, stranger_bucket,
                      coworker_bucket):
    # The requester: this process, with its own state and result key, its data and spec in its
    # own bucket, served to everyone over HTTP.
    # As a requester outside this test suite (which allows paths: conftest.py) would be.
    config = isolated_config(tmp_path / "requester").model_copy(
        update={"allow_local_uris": None})
    assert not config.local_uris_allowed()  # anvil: only URLs reach the chain
    spec, key, spec_uri = sealed_spec(own, tmp_path / "requester", config.state_folder)
    board = deploy_board(accounts[0], config=config)
    requester = Requester(board, accounts[0], config=config)
    task = requester.publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2, commit_blocks=200, reveal_blocks=400,
        requester_coin=False, spec_uri=spec_uri)
    coworker_config = isolated_config(tmp_path / "coworker")
    coworker = Worker(board, accounts[2], config=coworker_config.model_copy(update={
        "worker": coworker_config.worker.model_copy(
            update=coworker_bucket.worker_settings())}))
    coworker.join(task)

    # The stranger writes its board's address, where its job environment is (the one `make
    # env` built here stands in for its own `ape crowdml job-env create`) and its own bucket
    # with its own key pair, and nothing else, into an empty folder.
    home = tmp_path / "stranger"
    home.mkdir()
    stack = spec.profile.stack
    (home / "ape-config.yaml").write_text(yaml.safe_dump(
        {"crowdml": {"boards": {"ethereum": {"local": board.address}},
                     "job_envs": {stack: str(jobenv.interpreter(stack))},
                     "worker": stranger_bucket.worker_settings()}}))
    # Its own environment: no credentials of anyone's, no test-suite leniency about paths.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.pop("APE_CROWDML_ALLOW_LOCAL_URIS", None)
    env.update({"PYTHONPATH": str(installed_wheel), "APE_FOUNDRY_HOST": anvil})
    env.pop("APE_CROWDML_JOB_ENV_FOLDER", None)  # only its own config names it
    where = subprocess.run(
        [sys.executable, "-c", "import ape_crowdml, crowdml_jobs; "
         "print(ape_crowdml.__file__, crowdml_jobs.__file__)"],
        cwd=home, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(installed_wheel)) for path in where), where
    log = tmp_path / "stranger.log"
    agent = subprocess.Popen(
        [APE, "crowdml", "agent", "--tasks", "1", "--poll", "0.5", "--account", "TEST::1",
         "--network", "ethereum:local:foundry"],
        cwd=home, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    stranger = accounts[1].address
    try:
        wait_for(lambda: board.worker_status(task, stranger) == WorkerStatus.COMMITTED,
                 "its commit", agent, log)
        result = coworker.work(task)
        wait_for(lambda: board.worker_status(task, stranger) == WorkerStatus.REVEALED,
                 "its reveal", agent, log)
        coworker.reveal(task)
        assert agent.wait(timeout=180) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    output = log.read_text()
    assert board.phase(task) == Phase.AGREED, output
    assert board.claims(task) == {stranger: DEPOSIT + REWARD // 2}, output
    assert f"task {task}: result delivered" in output
    # It wrote only its state into its folder.
    assert sorted(p.name for p in home.iterdir()) == [".crowdml", "ape-config.yaml"]
    # It announced its own bucket's public URI, which serves the result sealed to the
    # requester's key: the requester, sharing no credentials, opens and verifies it.
    [(announcer, uri)] = board.announcements(task)
    assert announcer == stranger and uri.startswith(stranger_bucket.public_url)
    delivery = requester.fetch_delivery(task)
    artifact = delivery.artifact
    assert keccak_digest(artifact) == result
    assert fsspec.open(uri, "rb").open().read() == seal(pack(artifact, delivery.summary), key)
    assert delivery.summary["metrics"]["test_accuracy"] > 0  # its job's word, sealed too
    assert decode_result(artifact)["params"]["Dense_0"]["kernel"].shape == (64, 16)
