"""`ape crowdml agent` with a real keyfile account, imported into a fresh ape data folder: it
signs unattended with --autosign and the passphrase in ape's variable, and it refuses at once,
in one line, wherever it would otherwise wait for someone to answer a prompt."""

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ape_crowdml.board import Phase, WorkerStatus
from ape_crowdml.parties import Requester, Worker, deploy_board
from crowdml_support import DEPOSIT, REWARD, isolated_config, tiny_spec_file
from test_agent_recovery import REPO, agent_project, anvil, wait_for  # noqa: F401 - fixtures

APE = str(Path(sys.executable).parent / "ape")
ALIAS, PASSPHRASE = "crowdml-bot", "a long Passphrase, 4 tests!"
VARIABLE = f"APE_ACCOUNTS_{ALIAS}_PASSPHRASE"


@pytest.fixture
def keyfile(tmp_path):
    """(ape data folder, address) of a keyfile account imported with ape's own importer."""
    data_folder = tmp_path / "ape-data"
    script = ("import sys; from ape_accounts import import_account_from_private_key as imp; "
              "print(imp(sys.argv[1], sys.argv[2], sys.argv[3]).address)")
    imported = subprocess.run(
        [sys.executable, "-c", script, ALIAS, PASSPHRASE, "0x" + secrets.token_hex(32)],
        env={**os.environ, "APE_DATA_FOLDER": str(data_folder)}, capture_output=True,
        text=True, check=True)
    assert (data_folder / "accounts" / f"{ALIAS}.json").is_file()
    return data_folder, imported.stdout.strip().splitlines()[-1]


def agent_command(*options: str, network: str = "ethereum:local:test") -> list[str]:
    return [APE, "crowdml", "agent", *options, "--network", network]


@pytest.mark.parametrize("options, passphrase, line", [
    ((), None, "the agent runs unattended and cannot ask for an account: name it with "
               "--account ALIAS (or TEST::N)"),
    (("--account", ALIAS), PASSPHRASE, f"account {ALIAS} would ask before signing each "
                                       f"transaction and nobody is there to answer: pass "
                                       f"--autosign, with its passphrase in {VARIABLE}"),
    (("--account", ALIAS, "--autosign"), None, f"--autosign unlocks account {ALIAS} with the "
                                               f"passphrase in {VARIABLE}, which is not set"),
    (("--account", ALIAS, "--autosign"), "wrong", f"the passphrase in {VARIABLE} does not "
                                                  f"unlock account {ALIAS}"),
])
def test_the_agent_refuses_to_wait_on_a_prompt(keyfile, options, passphrase, line):
    data_folder, _ = keyfile
    env = {**os.environ, "APE_DATA_FOLDER": str(data_folder)}
    env.pop(VARIABLE, None)
    if passphrase is not None:
        env[VARIABLE] = passphrase
    # stdin is a terminal nobody types into: a prompt would wait until the timeout.
    master, terminal = os.openpty()
    try:
        done = subprocess.run(agent_command(*options), cwd=REPO, env=env, stdin=terminal,
                              capture_output=True, text=True, timeout=120)
    finally:
        os.close(master)
        os.close(terminal)
    output = done.stdout + done.stderr  # ape logs to stdout on a terminal
    assert done.returncode == 1, output
    assert [text for text in output.splitlines() if text.startswith("ERROR")] == [
        f"ERROR:    {line}"], output


@pytest.mark.anvil  # depends on the node: run on anvil too
def test_a_keyfile_agent_signs_unattended_through_a_task(keyfile, accounts, tmp_path,
                                                         agent_project):  # noqa: F811
    data_folder, address = keyfile
    config = isolated_config(tmp_path).model_copy(
        update={"artifact_store": str(tmp_path / "artifacts")})
    board = deploy_board(accounts[0], config=config)
    accounts[0].transfer(address, 10**18)
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path, job=REPO / "jobs" / "train_classifier.py"), reward=REWARD,
        deposit=DEPOSIT, workers=2, commit_blocks=200, reveal_blocks=400, requester_coin=False)
    coworker = Worker(board, accounts[2], config=config)
    coworker.join(task)

    log = tmp_path / "agent.log"
    env = {**os.environ, "APE_DATA_FOLDER": str(data_folder), VARIABLE: PASSPHRASE}
    agent = subprocess.Popen(
        agent_command("--tasks", "1", "--poll", "0.5", "--board", board.address, "--account",
                      ALIAS, "--autosign", network="ethereum:local:foundry"),
        cwd=agent_project, env=env, stdin=subprocess.DEVNULL, stdout=log.open("w"),
        stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: board.worker_status(task, address) == WorkerStatus.COMMITTED,
                 "its commit", agent, log)
        coworker.work(task)
        wait_for(lambda: board.worker_status(task, address) == WorkerStatus.REVEALED,
                 "its reveal", agent, log)
        coworker.reveal(task)
        assert agent.wait(timeout=120) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
    assert board.phase(task) == Phase.AGREED
    assert board.claims(task) == {address: DEPOSIT + REWARD // 2}
