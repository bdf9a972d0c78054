"""Fixtures shared by the suites: a board, its parties, a driver that plays one
task through with a strategy per worker and reports every payoff, the
`ape crowdml` command line run through ape's root CLI, an S3-compatible store
server on loopback, and the package installed alone from its wheel."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ape._cli import cli as ape_cli
from click.testing import CliRunner
from board_support import (DEPOSIT, HIDE, REWARD, ROOT, SKIP, WINDOW, Played, assert_solvent,
                           mine_past_deadline, publish, result_for, salt_for)

# tests/compute imports jax: it runs in the job stack (`make test-compute`), not under ape.
collect_ignore = ["compute"]


def pytest_collection_modifyitems(config, items):
    """`slow` tests, whose behaviour a faster test covers too, run with CROWDML_SLOW=1."""
    if os.environ.get("CROWDML_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow, covered by a faster test: CROWDML_SLOW=1 runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

# The job environments `make env` built (ape-config.yaml names them for this project): the same
# for projects and processes the tests start in other folders, unless their config says else.
os.environ.setdefault("APE_CROWDML_JOB_ENV_FOLDER", str(ROOT / ".jobenv"))
# Every party of a test shares this machine's disk, on anvil too: paths may stand for URLs.
# The tests of the rule itself (test_delivery.py, test_stranger.py, the README walkthrough)
# turn it off where they play it.
os.environ.setdefault("APE_CROWDML_ALLOW_LOCAL_URIS", "true")


@pytest.fixture(scope="session")
def requester(accounts):
    return accounts[0]


@pytest.fixture(scope="session")
def sink(accounts):
    return accounts[9]


@pytest.fixture(scope="session")
def workers(accounts):
    return [accounts[i] for i in range(1, 9)]


@pytest.fixture
def board(project, requester, sink):
    return project.TaskBoard.deploy(sink, sender=requester)


@pytest.fixture
def play(board, requester, chain):
    """Play one task: each worker follows its strategy; returns every party's payoff."""

    def _play(strategies, reward=REWARD, deposit=DEPOSIT, worker_accounts=None, claim=True):
        crew = worker_accounts[: len(strategies)]
        task_id = publish(board, requester, workers=len(crew), reward=reward, deposit=deposit)
        for w in crew:
            board.join(task_id, value=deposit, sender=w)
        for w, s in zip(crew, strategies):
            if s != SKIP:
                commitment = board.commitment_of(result_for(s, w), salt_for(w), w, task_id)
                board.commit(task_id, commitment, sender=w)
        if any(s == SKIP for s in strategies):
            chain.mine(WINDOW + 1)
        for w, s in zip(crew, strategies):
            if s not in (SKIP, HIDE):
                board.reveal(task_id, result_for(s, w), salt_for(w), sender=w)
        if any(s == HIDE for s in strategies):
            mine_past_deadline(chain, board, task_id)
        board.settle(task_id, sender=requester)
        assert_solvent(board, task_id, [requester, *crew])

        played = Played(task_id=task_id, outcome=board.phase(task_id))
        if not claim:
            return played
        for party, stake in [(requester, reward)] + [(w, deposit) for w in crew]:
            paid = board.owed(task_id, party)
            if paid:
                before = party.balance
                receipt = board.claim(task_id, sender=party)
                assert party.balance - before + receipt.total_fees_paid == paid
            played.payoff[party.address] = paid - stake
        assert_solvent(board, task_id, [requester, *crew])
        assert board.balance == board.forfeited()
        return played

    return _play


@pytest.fixture
def state(tmp_path, project, networks):
    """State and artifacts in a fresh folder, as a new machine would have them. On anvil, the
    suite's node is named as the foundry host: a command would otherwise start its own."""
    # temp_config replaces a whole section: keep the project's worker settings (its warm job
    # processes), as a machine with this project's config has them.
    worker = yaml.safe_load((project.path / "ape-config.yaml").read_text())["crowdml"]["worker"]
    overrides = {"crowdml": {"state_folder": str(tmp_path / "state"), "worker": worker}}
    if networks.provider.name == "foundry":
        overrides["foundry"] = {"host": networks.provider.uri}
    with project.temp_config(**overrides):
        yield tmp_path


# The commands that ask before sending ether (`-y/--yes` skips the question).
CONFIRMING = {"deploy", "publish", "join"}


@pytest.fixture
def ape(networks, state):
    """Run `ape crowdml ARGS` through ape's root CLI on the suite's network. A command that
    asks for confirmation gets `--yes`, unless `answer` is given to type at its prompt."""
    runner = CliRunner()

    def run(*args, account=None, expect=0, answer=None):
        argv = ["crowdml", *map(str, args), "--network", networks.provider.network_choice]
        if account is not None:
            argv += ["--account", f"TEST::{account}"]
        if (args[0] in CONFIRMING or args[:2] == ("order", "open")) and answer is None:
            argv.append("--yes")
        result = runner.invoke(ape_cli, argv, catch_exceptions=False, input=answer)
        assert result.exit_code == expect, result.output
        return result.output

    return run


@pytest.fixture(scope="session")
def store_server():
    """An S3-compatible server on loopback (tests/store_server.py), for the session; this
    process's AWS_* variables point at it while it runs."""
    from store_server import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> Path:
    """The package built as a wheel and installed alone (no dependencies) into a folder; with
    it on PYTHONPATH, the venv's packages serve the dependencies."""
    source = tmp_path_factory.mktemp("source")  # setuptools writes build/ beside the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("ape_crowdml", "crowdml_compute", "jobs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(built), str(source)], check=True, capture_output=True)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), *map(str, built.glob("*.whl"))], check=True, capture_output=True)
    return target
