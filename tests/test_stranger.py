"""The stranger: a worker that shares nothing with the requester but the chain and the stores
the chain names. In an empty folder outside the repository, with the package installed alone
from its wheel (no jobs/ folder, no repository on the path) and an ape-config.yaml holding only
the board's address and its job environment (compute/jobenv.py), an `ape crowdml agent` process finds the task on the board, fetches its
spec at the URI of the Published event, the data and the shipped job by digest, works, reveals,
publishes the result to the spec's S3 store and claims.

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
from ape_crowdml.compute import jobenv
from ape_crowdml.compute.data import export_digits
from ape_crowdml.compute.digest import keccak_digest
from ape_crowdml.compute.spec import make_spec
from ape_crowdml.parties import Requester, Worker, deploy_board
from crowdml_support import DEPOSIT, REWARD, TINY_HPARAMS, isolated_config
from test_agent_recovery import anvil  # noqa: F401 - fixture

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
        accounts, tmp_path, anvil, store_server, installed_wheel):
    # The requester: this process, with its own state, data and store on the S3 server.
    bucket = store_server.bucket("stranger-tasks")
    local = tmp_path / "requester" / "digits.npz"
    export_digits(local)
    data_uri = f"{bucket}/data/digits.npz"
    with fsspec.open(data_uri, "wb") as f:
        f.write(local.read_bytes())
    spec = make_spec("train_classifier", local, TINY_HPARAMS, data_uri=data_uri,
                     store=f"{bucket}/artifacts")
    config = isolated_config(tmp_path / "requester")
    board = deploy_board(accounts[0], config=config)
    task = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2, commit_blocks=200, reveal_blocks=400,
        requester_coin=False)
    coworker = Worker(board, accounts[2], config=isolated_config(tmp_path / "coworker"))
    coworker.join(task)

    # The stranger writes its board's address and where its job environment is (the one
    # `make env` built here stands in for its own `ape crowdml job-env create`), and nothing
    # else, into an empty folder.
    home = tmp_path / "stranger"
    home.mkdir()
    stack = spec.profile.stack
    (home / "ape-config.yaml").write_text(yaml.safe_dump(
        {"crowdml": {"boards": {"ethereum": {"local": board.address}},
                     "job_envs": {stack: str(jobenv.interpreter(stack))}}}))
    env = {**os.environ, **store_server.env, "PYTHONPATH": str(installed_wheel),
           "APE_FOUNDRY_HOST": anvil}
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
    # It wrote only its state into its folder.
    assert sorted(p.name for p in home.iterdir()) == [".crowdml", "ape-config.yaml"]
    # Its result reached the spec's store: a reader sharing no store fetches it, verified.
    reader = Worker(board, accounts[3], config=isolated_config(tmp_path / "reader"))
    assert keccak_digest(reader.fetch_bytes(task)) == result
