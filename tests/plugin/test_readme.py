"""The README's "Using it" examples run as written.

The console example runs in process on the suite's network. The command-line walkthrough runs
as a user would: a persistent anvil with a block time, every command its own `ape` process, in
a fresh project folder (requester TEST::0, workers TEST::1..3). Between its lines, the common
mistakes: each must print one line, exit with status 1, and send nothing; at the end no block
holds a failed transaction. It takes minutes (every command starts ape), so it runs with
CROWDML_WALKTHROUGH=1; the same commands run in process in tests/plugin/test_cli.py, and as processes
on anvil in tests/integration.
"""

import json
import os
import signal
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ape_crowdml.board import Phase
from ape_crowdml.console import load_ipython_extension
from job_support import job_python
from crowdml_support import tiny_spec_file

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NETWORK = "ethereum:local:foundry"


def using_it_blocks(language: str) -> list[str]:
    """The fenced blocks of the README's "Using it" section in `language` ("" for none)."""
    text = README.read_text()
    section = text[text.index("## Using it"):]
    section = section[:section.index("\n## ", 1)]
    blocks, current, fence = [], [], None
    for line in section.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, current = line[3:].strip(), []
            else:
                if fence == language:
                    blocks.append("\n".join(current) + "\n")
                fence = None
        elif fence is not None:
            current.append(line)
    return blocks


class Shell:
    def __init__(self, namespace: dict):
        self.user_ns = namespace

    def push(self, names: dict) -> None:
        self.user_ns.update(names)


@pytest.mark.anvil  # depends on the node: run on anvil too
def test_console_example_runs_as_written(project, tmp_path, monkeypatch):
    from ape import accounts

    example, use_the_model = using_it_blocks("python")
    # The example's spec.json, with the repository's job: a tiny one, to keep the test short.
    tiny_spec_file(tmp_path, job=ROOT / "jobs" / "train_classifier.py")
    monkeypatch.chdir(tmp_path)
    namespace = {"accounts": accounts}
    load_ipython_extension(Shell(namespace))  # what `ape console` loads
    with project.temp_config(crowdml={"state_folder": str(tmp_path / "state")}):
        exec(compile(example, str(README), "exec"), namespace)
        task, alice = namespace["task"], namespace["alice"]
        assert alice.board.phase(task) == Phase.AGREED
        # What `ape crowdml fetch 1 --out model.crowdml` writes, where the README's next
        # example loads it, with the data set make-spec wrote.
        (tmp_path / "model.crowdml").write_bytes(alice.fetch_bytes(task))
    assert namespace["params"]["Dense_0"]["kernel"].shape == (64, 16)
    assert alice.board.claims(task) == {accounts.test_accounts[1].address: 3 * 10**16}
    (tmp_path / "data").mkdir()
    shutil.copy(tmp_path / "digits.npz", tmp_path / "data" / "digits.npz")
    # The model is used where jax is: a job environment's interpreter (the plugin has none).
    python, env = job_python()
    used = subprocess.run(python + ["-c", use_the_model], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert used.returncode == 0, used.stderr
    # The test accuracy the worker's job reported, from the model as loaded.
    reported = namespace["workers"][0].summary(task)["metrics"]["test_accuracy"]
    assert float(used.stdout) == pytest.approx(reported, abs=1e-6)


# ------------------------------------------------------------------ the command line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Anvil:
    """anvil with a block time, and the JSON-RPC calls the test checks the chain with."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        anvil = shutil.which("anvil")
        if anvil is None:
            pytest.skip("anvil is not on PATH")
        self.process = subprocess.Popen([anvil, "--port", str(self.port), "--block-time", "1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.head()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("anvil did not start")

    def rpc(self, method: str, *params):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = urllib.request.Request(self.url, body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["result"]

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def nonce(self, address: str) -> int:
        return int(self.rpc("eth_getTransactionCount", address, "latest"), 16)

    def failed_transactions(self) -> list[str]:
        failed = []
        for number in range(self.head() + 1):
            for tx in self.rpc("eth_getBlockByNumber", hex(number), False)["transactions"]:
                if self.rpc("eth_getTransactionReceipt", tx)["status"] != "0x1":
                    failed.append(tx)
        return failed

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def anvil():
    node = Anvil()
    yield node
    node.stop()


def walkthrough_setup() -> str:
    """The walkthrough's first block without the chain, which the test starts itself: the
    parties' folders, configs and HTTP servers, as a bash script."""
    chain = using_it_blocks("sh")[0]
    assert "anvil --block-time 1" in chain  # the chain the test starts
    return "\n".join(line for line in chain.splitlines()
                     if not line.startswith(("anvil ", "export APE_FOUNDRY_HOST")))


def walkthrough_commands() -> list[tuple[str, list[str]]]:
    """The walkthrough's commands as (folder, argv), one process each: `for w in …` loops
    unrolled, `cd` followed, `(cd DIR && …)` run in DIR."""
    commands = using_it_blocks("sh")[1]
    folder, steps = Path("."), []
    for line in commands.strip().splitlines():
        loop = re.fullmatch(r"for w in ([\d ]+); do (.*); done", line.strip())
        for w in loop.group(1).split() if loop else [None]:
            command = loop.group(2).replace("$w", w) if loop else line
            inner = re.fullmatch(r"\(cd (\S+) && (.*)\)", command.strip())
            if command.startswith("cd "):
                folder = Path(os.path.normpath(folder / command.split()[1]))
            elif inner:
                steps.append((str(folder / inner.group(1)),
                              shlex.split(inner.group(2), comments=True)))
            else:
                steps.append((str(folder), shlex.split(command, comments=True)))
    return steps


def verb_and_account(argv: list[str]) -> tuple[str, str | None]:
    account = argv[argv.index("--account") + 1] if "--account" in argv else None
    return argv[2] if argv[0] == "ape" else argv[0], account


def party_folder(account: str) -> str:
    """Where the walkthrough runs an account's commands."""
    return "requester" if account == "TEST::0" else f"worker{account.removeprefix('TEST::')}"


# After the command (verb, account) of the walkthrough: mistakes, each (account, arguments,
# what its one line must say).
PUBLISH = ["publish", "spec.json", "--reward", "0.03 ether", "--account", "TEST::0"]
MISTAKES = {
    ("publish", "TEST::0"): [
        ("TEST::0", [*PUBLISH, "--deposit", "3", "--workers", "3"],
         "the deposit must be positive and even"),
        ("TEST::0", [*PUBLISH, "--deposit", "0.02 ether", "--workers", "1"],
         "a task needs at least 2 workers, not 1"),
    ],
    ("join", "TEST::1"): [
        ("TEST::1", ["join", "1", "--account", "TEST::1"], "has already joined task 1"),
    ],
    ("join", "TEST::3"): [
        ("TEST::1", ["work", "1", "--account", "TEST::1"],
         r"awaits the requester's coin: wait for it until block \d+"),
        ("TEST::1", ["release-coin", "1", "--account", "TEST::1"],
         "only task 1's requester 0x"),
    ],
    ("work", "TEST::1"): [
        ("TEST::1", ["reveal", "1", "--account", "TEST::1"],
         r"reveal opens when all 3 workers have committed \(1 so far\) or at block \d+"),
    ],
    ("reveal", "TEST::3"): [
        ("TEST::1", ["claim", "1", "--account", "TEST::1"],
         r"has not ended \(settleable\): claim after it is settled"),
    ],
    ("status", None): [
        ("TEST::1", ["work", "1", "--account", "TEST::1"], "task 1 has ended: agreed"),
    ],
}


@pytest.mark.skipif(not os.environ.get("CROWDML_WALKTHROUGH"),
                    reason="minutes of ape processes: set CROWDML_WALKTHROUGH=1")
def test_cli_walkthrough_runs_as_written_and_mistakes_send_nothing(anvil, tmp_path, accounts):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "ape-config.yaml", project)
    shutil.copytree(ROOT / "jobs", project / "jobs")
    (project / ".jobenv").symlink_to(ROOT / ".jobenv")  # the parties' configs name ../.jobenv
    env = {**os.environ, "APE_FOUNDRY_HOST": anvil.url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("APE_CROWDML_ALLOW_LOCAL_URIS", None)  # as between machines: only URLs
    addresses = {f"TEST::{i}": accounts[i].address for i in range(4)}
    # The parties' folders and HTTP servers, as the README sets them up (its own session:
    # the servers are stopped with it at the end).
    setup = subprocess.Popen(["bash", "-c", walkthrough_setup() + "\nwait"], cwd=project,
                             env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _play_the_walkthrough(project, env, addresses, anvil)
    finally:
        os.killpg(setup.pid, signal.SIGTERM)
        setup.wait(timeout=10)


def _play_the_walkthrough(project: Path, env: dict, addresses: dict, anvil) -> None:
    deadline = time.monotonic() + 30
    while not all((project / f"worker{w}" / "ape-config.yaml").exists() for w in (1, 2, 3)):
        assert time.monotonic() < deadline, "the README's set-up did not run"
        time.sleep(0.2)
    time.sleep(1)  # the HTTP servers listening

    def ape(argv: list[str], folder: str = ".") -> subprocess.CompletedProcess:
        if argv[0] != "ape":  # a shell line of the walkthrough (cp)
            return subprocess.run(argv, cwd=project / folder, env=env, capture_output=True,
                                  text=True, timeout=60)
        return subprocess.run(argv, cwd=project / folder, env=env, capture_output=True,
                              text=True, timeout=300)

    def mistake(account: str, args: list[str], says: str) -> str:
        nonce = anvil.nonce(addresses[account])
        run = ape(["ape", "crowdml", *args, "--network", NETWORK], party_folder(account))
        output = run.stdout + run.stderr
        assert run.returncode == 1, (args, output)
        assert re.fullmatch(rf"ERROR: +.*{says}.*\n", output), (args, output)
        assert anvil.nonce(addresses[account]) == nonce, args
        return output

    # Read-only, without a board or --network: one line that hints at --network, no folder.
    run = ape(["ape", "crowdml", "status", "1"])
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "--network ethereum:local:foundry" in output, output
    assert output.count("\n") == 1 and not (project / ".crowdml").exists()

    refusals, said = [], {}
    for folder, argv in walkthrough_commands():
        run = ape(argv, folder)
        output = run.stdout + run.stderr
        assert run.returncode == 0, (argv, output)
        assert "Traceback" not in output and "Warning" not in output, (argv, output)
        said[verb_and_account(argv)] = output
        for account, args, says in MISTAKES.get(verb_and_account(argv), []):
            refusals.append(mistake(account, args, says))
    assert len(refusals) == sum(map(len, MISTAKES.values()))
    assert "task 1 settled: agreed" in said["settle", "TEST::0"]
    assert "claimed 0.03 ETH from task 1" in said["claim", "TEST::3"]  # deposit + reward / 3
    # The model reached the requester, sealed to its key on the first worker's public folder
    # only: the others found the same bytes there and uploaded nothing.
    assert "verified (read at http://127.0.0.1:9001/0x" in said["fetch", None]
    assert (project / "requester" / "model.crowdml").exists()
    assert (project / "requester" / "report.png").read_bytes().startswith(b"\x89PNG")
    uploads = [sorted(p.name for p in (project / f"worker{w}" / "public").iterdir())
               for w in (1, 2, 3)]
    assert len(uploads[0]) == 1 and uploads[1:] == [[], []], uploads
    assert anvil.failed_transactions() == []

    # The refusals the README shows are ones the commands print (numbers and addresses aside).
    (shown,) = using_it_blocks("")
    for line in shown.splitlines():
        pattern = re.sub(r"0x[0-9a-fA-F]{40}|\d+", "@", line)
        assert any(re.sub(r"0x[0-9a-fA-F]{40}|\d+", "@", seen.strip()) == pattern
                   for seen in refusals), line
