"""ape's CLI conventions, through ape's root CLI: malformed values are one line with click's
status 2, every command takes `-v/--verbosity`, the commands that send ether ask first (nothing
sent on a no; `--yes` skips), `status` and `list` print JSON or YAML for scripts."""

import json
import re

import click
import pytest
import yaml
from ape._cli import cli as ape_cli
from click.testing import CliRunner

from ape_crowdml._cli import cli as crowdml_cli
from ape_crowdml.render import wei
from crowdml_support import DEPOSIT, REWARD, tiny_spec_file

BURN = "0x000000000000000000000000000000000000dEaD"


def usage_error(argv: list[str]) -> str:
    """Run a command line that must be refused as malformed; returns its one line."""
    result = CliRunner().invoke(ape_cli, ["crowdml", *argv], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    return result.output.strip()


@pytest.mark.parametrize("argv, says", [
    (["status", "1", "--board", "nonsense"],
     "Invalid value for '--board': 'nonsense' is not an address"),
    (["list", "--board", "0x1234"], "'0x1234' is not an address"),
    (["deploy", "--sink", "dead", "--account", "TEST::0"], "'--sink': 'dead' is not an address"),
    (["publish", "spec.json", "--reward", "1", "--deposit", "2", "--workers", "2",
      "--trivial", "0x" + "ab" * 31, "--account", "TEST::0"], "is 31 bytes, not 32"),
    (["publish", "spec.json", "--reward", "1", "--deposit", "2", "--workers", "2",
      "--trivial", "0xzz", "--account", "TEST::0"], "'--trivial': '0xzz' is not hex"),
    (["publish", "spec.json", "--reward", "lots", "--deposit", "2", "--workers", "2",
      "--account", "TEST::0"], "'lots' is not an amount"),
    (["run-job", "spec.json", "--coin", "0x" + "00" * 33], "is 33 bytes, not 32"),
    (["make-spec", "job.py", "data.npz", "--hparams", "{epochs: 1}"],
     "Invalid value for '--hparams': Invalid JSON string"),
    (["make-spec", "job.py", "data.npz", "--canary", "{"], "'--canary': Invalid JSON string"),
    (["status", "1", "--format", "xml"], "Invalid value for '--format': 'xml' is not one of"),
])
def test_a_malformed_value_is_one_line_with_status_2(argv, says):
    line = usage_error(argv)
    assert line.startswith("Error: ") and says in line, line


def test_a_missing_value_is_one_line_and_an_unknown_option_gets_the_usage():
    assert usage_error(["status"]) == "Error: Missing argument 'TASK'."
    result = CliRunner().invoke(ape_cli, ["crowdml", "status", "1", "--colour"])
    assert result.exit_code == 2 and "crowdml status [OPTIONS] TASK" in result.output
    assert "No such option: --colour" in result.output


def test_a_well_formed_board_without_code_is_a_user_error(ape):
    output = ape("status", 1, "--board", BURN, expect=1)
    assert re.fullmatch(rf"ERROR: +no contract at {BURN} on chain \d+; deploy one .*\n", output)


def all_commands():
    return sorted(crowdml_cli.commands.items())


@pytest.mark.parametrize("name, command", all_commands(), ids=[n for n, _ in all_commands()])
def test_every_option_has_help_and_verbosity_is_everywhere(name, command):
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert "verbosity" in {p.name for p in options}
    assert command.help and not [p.name for p in options if not p.help]


def test_only_the_commands_that_send_ether_ask_and_the_agent_never_does():
    asking = {name for name, command in crowdml_cli.commands.items()
              if "skip_confirmation" in {p.name for p in command.params}}
    assert {"deploy", "publish", "join"} <= asking and "agent" not in asking


def test_verbosity_is_accepted_and_sets_apes_log_level(ape):
    from ape.logging import LogLevel, logger

    level = logger.level
    try:
        assert "no task board configured" in ape("list", "-v", "DEBUG", expect=1)
        assert logger.level == LogLevel.DEBUG
    finally:
        logger.set_level(level)


@pytest.fixture
def spec(state):
    return tiny_spec_file(state)


@pytest.fixture
def board(ape):
    ape("deploy", "--sink", BURN, account=0)


def publish_args(spec):
    return ["publish", spec, "--reward", REWARD, "--deposit", DEPOSIT, "--workers", 2]


def test_declined_deploy_sends_nothing(ape, accounts):
    nonce = accounts[0].nonce
    output = ape("deploy", "--sink", BURN, account=0, answer="n\n", expect=1)
    assert f"Deploy a task board from {accounts[0].address} (gas only)" in output
    assert BURN in output and output.rstrip().endswith("Aborted!")
    assert accounts[0].nonce == nonce


def test_declined_publish_sends_nothing(ape, board, spec, accounts):
    nonce, balance = accounts[0].nonce, accounts[0].balance
    output = ape(*publish_args(spec), account=0, answer="n\n", expect=1)
    assert f"escrowing a reward of {wei(REWARD)}" in output
    assert f"(2 workers, {wei(DEPOSIT)} deposit each)?" in output
    assert output.rstrip().endswith("Aborted!")
    assert (accounts[0].nonce, accounts[0].balance) == (nonce, balance)
    assert "task 1 published" in ape(*publish_args(spec), account=0, answer="y\n")


def test_join_asks_after_its_checks_and_yes_skips(ape, board, spec, accounts):
    ape(*publish_args(spec), account=0)
    nonce = accounts[1].nonce
    output = ape("join", 1, account=1, answer="n\n", expect=1)
    assert f"Join task 1, locking a deposit of {wei(DEPOSIT)} from {accounts[1].address}?" in output
    assert accounts[1].nonce == nonce
    output = ape("join", 1, "-y", account=1, answer="")
    assert "Join task 1" not in output and "joined task 1" in output
    assert accounts[1].nonce == nonce + 1
    # A refused join asks nothing: the one line says why.
    output = ape("join", 1, account=1, answer="", expect=1)
    assert output.startswith("ERROR: ") and output.count("\n") == 1, output


def test_status_and_list_print_json_and_yaml(ape, board, spec, accounts):
    ape(*publish_args(spec), account=0)
    ape("join", 1, account=1)
    status = json.loads(ape("status", 1, "--format", "json"))
    assert status["phase"] == "joining" and status["reward"] == REWARD
    assert status["deposit"] == DEPOSIT and status["requester"] == accounts[0].address
    assert [(w["worker"], w["status"], w["owed"]) for w in status["roster"]] == [
        (accounts[1].address, "joined", 0)]
    assert status["result"] is None and status["spec"].startswith("0x")
    assert yaml.safe_load(ape("status", 1, "--format", "yaml")) == status
    listing = json.loads(ape("list", "--format", "json"))
    assert [(t["task"], t["phase"], t["joined"], t["workers"]) for t in listing["tasks"]] == [
        (1, "joining", 1, 2)]
    assert yaml.safe_load(ape("list", "--format", "yaml")) == listing
    assert "│ 1 " in ape("list")  # the default: the rich table


def test_ctrl_c_during_a_job_is_one_line_and_stops_the_job(tmp_path):
    """Ctrl-C at the terminal (SIGINT to the foreground process group) while `run-job` waits
    for its job: one ERROR line, no traceback from either process, and the job process gone."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    from crowdml_compute.spec import make_spec, save_spec

    root = Path(__file__).resolve().parents[2]
    tiny_spec_file(tmp_path)  # the digits data set
    spec = make_spec(root / "tests" / "job_files" / "wait_for_file.py", tmp_path / "digits.npz",
                     {"release": str(tmp_path / "never")})
    save_spec(spec, tmp_path / "wait.json")
    (tmp_path / "ape-config.yaml").write_text(
        f"crowdml:\n  jobs_folder: [{root / 'tests' / 'job_files'}]\n"
        f"  job_env_folder: {root / '.jobenv'}\n")
    ape = str(Path(sys.executable).parent / "ape")
    command = subprocess.Popen([ape, "crowdml", "run-job", "wait.json", "--coin", "0x" + "11" * 32],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # a terminal's process group

    def job_processes():
        return [p for p in psutil.process_iter(["cmdline"])
                if "crowdml_compute.runner" in " ".join(p.info["cmdline"] or [])
                and str(tmp_path) not in " ".join(p.info["cmdline"] or []) and
                p.pid != command.pid and command.pid in [a.pid for a in p.parents()]]

    deadline = time.monotonic() + 60
    while not job_processes():
        assert command.poll() is None and time.monotonic() < deadline, command.communicate()
        time.sleep(0.2)
    os.killpg(command.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
    out, err = command.communicate(timeout=30)
    assert command.returncode == 1, (out, err)
    # ape's logger picks stdout or stderr by where it runs; the progress bar is stderr's.
    lines = [line for line in (out + err).splitlines() if line.strip() and "training" not in line]
    assert len(lines) == 1 and re.fullmatch(

        r"ERROR: +interrupted: stopped here, with any job process this command started; a "
        r"transaction already sent stays sent", lines[0]), (out, err)
    assert "Traceback" not in out + err
    assert not job_processes()


def test_a_live_network_without_a_reachable_node_is_one_line(tmp_path):
    """`--network ethereum:sepolia` with no RPC configured: ape tries public ones (a warning
    per try); the command says the outcome in one line. (Where one answers, the line is that
    no board is configured for sepolia: one line too.)"""
    import subprocess
    import sys
    from pathlib import Path

    ape = str(Path(sys.executable).parent / "ape")
    run = subprocess.run([ape, "crowdml", "status", "1", "--network", "ethereum:sepolia"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("ERROR:"), lines
    assert "Traceback" not in run.stdout + run.stderr
