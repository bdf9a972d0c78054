"""Crash after commit: an agent process is killed once its commitment is on chain; a new
process, sharing nothing with it but the state folder, reveals from the stored salt and claims.

Two processes need one chain, so this runs on anvil only (`--network ethereum:local:foundry`).
"""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ape_crowdml.board import Phase, WorkerStatus
from ape_crowdml.parties import Requester, Worker, deploy_board
from crowdml_support import DEPOSIT, REWARD, isolated_config, tiny_spec_file

# Its behaviour depends on the node: `make test-anvil` runs it on anvil too.
pytestmark = pytest.mark.anvil

REPO = Path(__file__).resolve().parents[2]
APE = str(Path(sys.executable).parent / "ape")


@pytest.fixture
def anvil(networks):
    if networks.provider.name != "foundry":
        pytest.skip("needs a chain two processes share: run with --network ethereum:local:foundry")
    return networks.provider.uri


@pytest.fixture
def agent_project(tmp_path, anvil):
    """A project folder for the agent process: this repository's contract, the suite's anvil,
    its own state folder, and the artifact store it shares with the requester."""
    project = tmp_path / "agent-project"
    (project / "contracts").mkdir(parents=True)
    shutil.copy(REPO / "contracts" / "TaskBoard.vy", project / "contracts")
    config = yaml.safe_load((REPO / "ape-config.yaml").read_text())
    config["foundry"] = {**config.get("foundry", {}), "host": anvil}
    config["crowdml"] = {"state_folder": str(tmp_path / "agent-state"),
                         "artifact_store": str(tmp_path / "artifacts"),
                         "jobs_folder": str(REPO / "jobs")}
    (project / "ape-config.yaml").write_text(yaml.safe_dump(config))
    return project


def start_agent(project: Path, board: str, log: Path) -> subprocess.Popen:
    command = [APE, "crowdml", "agent", "--tasks", "1", "--poll", "0.5", "--board", board,
               "--account", "TEST::1", "--network", "ethereum:local:foundry"]
    return subprocess.Popen(command, cwd=project, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None and not condition():
            pytest.fail(f"agent exited ({process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.5)


def test_agent_killed_after_commit_reveals_after_restart(accounts, tmp_path, agent_project):
    config = isolated_config(tmp_path).model_copy(
        update={"artifact_store": str(tmp_path / "artifacts")})
    board = deploy_board(accounts[0], config=config)
    spec = tiny_spec_file(tmp_path, job=REPO / "jobs" / "train_classifier.py")
    task = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2, commit_blocks=200, reveal_blocks=400,
        requester_coin=False)
    coworker = Worker(board, accounts[2], config=config)
    coworker.join(task)
    agent_address = accounts[1].address

    first_log = tmp_path / "agent-1.log"
    first = start_agent(agent_project, board.address, first_log)
    try:
        wait_for(lambda: board.worker_status(task, agent_address) == WorkerStatus.COMMITTED,
                 "its commit", first, first_log)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert "revealed" not in first_log.read_text()

    coworker.work(task)
    assert board.phase(task) == Phase.REVEAL

    second_log = tmp_path / "agent-2.log"
    second = start_agent(agent_project, board.address, second_log)
    try:
        wait_for(lambda: board.worker_status(task, agent_address) == WorkerStatus.REVEALED,
                 "its reveal", second, second_log)
        coworker.reveal(task)
        assert second.wait(timeout=120) == 0, second_log.read_text()
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGKILL)
            second.wait()
    output = second_log.read_text()
    assert f"task {task}: revealed" in output and "from the stored salt" in output
    assert f"task {task}: committed" not in output, "the restarted agent must not redo the work"
    assert board.phase(task) == Phase.AGREED
    assert board.claims(task) == {agent_address: DEPOSIT + REWARD // 2}


def test_a_node_of_another_chain_is_refused_before_joining(accounts, tmp_path, anvil):
    """`--network ethereum:local:node` pointed at anvil: ape signs for chain 1337, anvil is
    31337 and would refuse every transaction. `join` says so in one line, sends nothing."""
    import re

    config = isolated_config(tmp_path / "requester")
    board = deploy_board(accounts[0], config=config)
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2)
    project = tmp_path / "worker"
    project.mkdir()
    (project / "ape-config.yaml").write_text(yaml.safe_dump(
        {"node": {"ethereum": {"local": {"uri": anvil}}}}))
    nonce = accounts[1].nonce
    run = subprocess.run([APE, "crowdml", "join", str(task), "--board", board.address, "-y",
                          "--account", "TEST::1", "--network", "ethereum:local:node"],
                         cwd=project, capture_output=True, text=True, timeout=120)
    output = [line for line in (run.stdout + run.stderr).splitlines()
              if not line.startswith("INFO")]
    assert run.returncode == 1 and len(output) == 1, run.stdout + run.stderr
    assert re.fullmatch(rf"ERROR: +the node at {re.escape(anvil)} is chain 31337, but --network "
                        r"ethereum:local:node signs for chain 1337: name the network of chain "
                        r"31337 \(anvil: ethereum:local:foundry\)", output[0]), output
    assert accounts[1].nonce == nonce
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.NONE
