"""Every user mistake the CLI knows gets one line (`Error: …`, exit 2), no traceback."""

import re

import pytest
from ape._cli import cli as ape_cli
from click.testing import CliRunner

from ape_crowdml.digest import file_digest
from ape_crowdml.spec import load_spec, save_spec
from crowdml_support import DEPOSIT, REWARD, tiny_spec_file


@pytest.fixture
def fails(ape):
    """Run a command that must fail; returns its one error line."""

    def run(*args, account=None):
        output = ape(*args, account=account, expect=2)
        errors = [line for line in output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "Traceback" not in output, output
        return errors[0]

    return run


@pytest.fixture
def board(ape, accounts):
    ape("deploy", account=0)


@pytest.fixture
def spec(state):
    return tiny_spec_file(state)


@pytest.fixture
def publish(ape, board, spec):
    def _publish(spec_file=spec, **terms):
        terms = {"reward": REWARD, "deposit": DEPOSIT, "workers": 2, **terms}
        options = [x for name, value in terms.items() for x in (f"--{name.replace('_', '-')}", value)]
        output = ape("publish", spec_file, *options, account=0)
        return int(re.search(r"task (\d+) published", output).group(1))

    return _publish


def test_board_not_configured_for_this_network(fails):
    assert "no task board configured for ethereum:local" in fails("status", 1)


def test_unknown_task(fails, board):
    assert re.fullmatch(r"Error: task 7 does not exist on board 0x\w{40} \(tasks 1\.\.0\)",
                        fails("status", 7))


def test_wrong_phase_is_the_boards_reason(fails, publish):
    task = publish()
    assert fails("settle", task, account=0).endswith(f"settle task {task} refused by the board: "
                                                       "not settleable")


def test_deadline_passed_is_the_boards_reason(fails, publish, chain):
    task = publish(join_blocks=2)
    chain.mine(3)
    assert fails("join", task, account=1).endswith("join window closed")


def test_insufficient_funds(fails, board, spec, accounts):
    line = fails("publish", spec, "--reward", accounts[3].balance + 1, "--deposit", DEPOSIT,
                 "--workers", 2, account=3)
    assert "insufficient funds" in line.lower()


def test_no_stored_salt(fails, publish):
    task = publish()
    assert f"no stored salt for task {task}" in fails("reveal", task, account=1)


def test_environment_mismatch(fails, publish, state, spec):
    real = load_spec(spec)
    pinned = {**real.profile.packages, "jax": "0.0.1"}
    other = real.model_copy(update={"profile": real.profile.model_copy(update={"packages": pinned})})
    task = publish(save_spec(other, state / "old-jax.json"))
    assert "pins jax==0.0.1, this machine has 0.7.1" in fails("join", task, account=1)


def test_data_digest_mismatch(fails, publish, state, spec):
    task = publish()
    data = state / "digits.npz"
    data.write_bytes(data.read_bytes() + b"tampered")
    assert "fetch the requester's file again" in fails("join", task, account=1)


def test_job_not_on_allowlist_is_refused_before_deposit(fails, publish, state, accounts):
    job = state / "my_job.py"
    job.write_bytes(b"def run(hparams, data, keys, report):\n    return b'x'\n")
    foreign = load_spec(tiny_spec_file(state)).model_copy(update={"job": str(job)})
    foreign = foreign.model_copy(update={"job_digest": "0x" + file_digest(job).hex()})
    task = publish(save_spec(foreign, state / "foreign.json"))
    before = accounts[1].balance
    assert "not on this worker's allowlist" in fails("join", task, account=1)
    assert accounts[1].balance == before


def test_bad_coin_for_run_job(state, spec):
    result = CliRunner().invoke(ape_cli, ["crowdml", "run-job", str(spec), "--coin", "0x12"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: coin must be 32 bytes (64 hex digits), got 1"
