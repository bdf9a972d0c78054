"""Every user mistake the CLI knows gets one line (`ERROR: …`, exit 1), no traceback."""

import re

import pytest
from ape._cli import cli as ape_cli
from click.testing import CliRunner

from ape_crowdml.board import commitment
from crowdml_compute.digest import file_digest
from ape_crowdml.parties import find_board
from crowdml_compute.spec import load_spec, save_spec
from crowdml_support import DEPOSIT, REWARD, tiny_spec_file

# Its behaviour depends on the node: `make test-anvil` runs it on anvil too.
pytestmark = pytest.mark.anvil


@pytest.fixture
def fails(ape):
    """Run a command that must fail; returns its one error line."""

    def run(*args, account=None):
        output = ape(*args, account=account, expect=1)
        assert output.startswith("ERROR: ") and output.count("\n") == 1, output
        return output.strip()

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
        options = []
        for name, value in terms.items():  # a True value is a flag
            options += [f"--{name.replace('_', '-')}"] + ([] if value is True else [value])
        output = ape("publish", spec_file, *options, account=0)
        return int(re.search(r"task (\d+) published", output).group(1))

    return _publish


def test_board_not_configured_for_this_network(fails, networks):
    line = fails("status", 1)
    assert "no task board configured for ethereum:local" in line
    provider = networks.provider
    if provider.name == "test":
        assert "ethereum:local:test lasts one command" in line
    elif getattr(provider, "process", None) is not None:  # on anvil ape started itself
        assert f"no node was running at {provider.uri}, so ape started a fresh chain" in line


def test_unknown_task(fails, board):
    assert re.fullmatch(r"ERROR: +task 7 does not exist on board 0x\w{40} \(tasks 1\.\.0\)",
                        fails("status", 7))


def test_wrong_phase_says_what_to_do(fails, publish):
    task = publish()
    assert fails("settle", task, account=0).endswith(f"task {task} has not started work "
                                                       "(joining); there is nothing to settle")


def test_deadline_passed_names_the_block(fails, publish, chain):
    task = publish(join_blocks=2)
    deadline = chain.blocks.head.number + 2  # the publish block + join_blocks
    chain.mine(2)
    assert fails("join", task, account=1).endswith(
        f"task {task}'s join window closed at block {deadline}")


def test_a_refusal_only_the_board_knows_is_found_by_simulation(fails, board, spec, accounts,
                                                               chain):
    """The local checks do not know every limit: the simulated call brings the board's reason,
    and still nothing is sent."""
    nonce, head = accounts[0].nonce, chain.blocks.head.number
    line = fails("publish", spec, "--reward", REWARD, "--deposit",
                 2**129, "--workers", 2, account=0)
    assert line.endswith("publish refused by the board: deposit too large")
    assert (accounts[0].nonce, chain.blocks.head.number) == (nonce, head)


def test_insufficient_funds(fails, board, spec, accounts):
    line = fails("publish", spec, "--reward", accounts[3].balance + 1, "--deposit", DEPOSIT,
                 "--workers", 2, account=3)
    assert "insufficient funds" in line.lower()


def test_no_stored_salt(fails, publish, accounts):
    """Both workers committed, but worker 1's salt is not on this machine."""
    board = find_board()
    task = publish(chain_coin=True)
    for worker in accounts[1], accounts[2]:
        board.join(worker, task)
    for worker in accounts[1], accounts[2]:
        board.commit(worker, task, commitment(b"\x11" * 32, b"\x22" * 32, worker.address, task))
    assert f"no stored salt for task {task}" in fails("reveal", task, account=1)


def test_environment_mismatch(fails, publish, state, spec):
    real = load_spec(spec)
    pinned = {**real.profile.packages, "jax": "0.0.1"}
    other = real.model_copy(update={"profile": real.profile.model_copy(update={"packages": pinned})})
    task = publish(save_spec(other, state / "old-jax.json"))
    assert (f"differs from the built-in one in packages (jax: '0.0.1', built in "
            f"'{real.profile.packages['jax']}')" in fails("join", task, account=1))


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
    """A malformed value is click's usage error (status 2), in one line."""
    result = CliRunner().invoke(ape_cli, ["crowdml", "run-job", str(spec), "--coin", "0x12"])
    assert result.exit_code == 2
    assert result.output == ("Error: Invalid value for '--coin': '0x12' is 1 bytes, not 32 "
                             "(0x and 64 hex digits)\n")


def test_a_spec_uri_that_does_not_serve_the_spec_is_refused_before_publishing(
        fails, ape, board, state, spec, accounts):
    wrong = state / "wrong.json"
    wrong.write_bytes(spec.read_bytes() + b" ")
    terms = ["--reward", REWARD, "--deposit", DEPOSIT, "--workers", 2]
    before = accounts[0].nonce
    assert "the spec URI does not serve this spec" in fails(
        "publish", spec, *terms, "--spec-uri", wrong, account=0)
    assert accounts[0].nonce == before
    served = state / "served.json"
    served.write_bytes(spec.read_bytes())
    assert f" at {served}, data " in ape("publish", spec, *terms, "--spec-uri", served, account=0)
