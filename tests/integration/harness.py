"""A multi-process rehearsal of crowdml on one anvil node: every party is its own process, with
its own account, state folder and working directory outside the repository. In the tests they
share only the chain (JSON-RPC on a loopback port): each has a bucket of its own (its own S3
server and key pair), the requester's holding its dataset and spec, each worker's its sealed
deliveries, all read by the others over HTTP. The benchmark shares one folder as the artifact
store instead.

Used by tests/integration (which assert payouts) and bench/rehearsal.py (which times them).
The observer below reads the chain with web3 alone, as any stranger could.

Accounts: each party has its own key, anvil's i-th default one (funded at genesis; no two
processes share one, which would race for nonces). A worker agent holds it as an ape keyfile
account in an ape data folder of its own and signs unattended (`--autosign`, the passphrase in
ape's variable), as on a worker's machine; the requester and the adversary scripts use the
Python API with the same key as ape's `TEST::i` (anvil's mnemonic is ape's test mnemonic).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ACTORS = Path(__file__).resolve().parent / "actors"
BIN = Path(sys.executable).parent
ACCOUNTS = 64  # anvil funds this many; each party takes its own
NETWORK = "ethereum:local:foundry"
MNEMONIC = "test test test test test test test test test test test junk"  # anvil's and ape's
KEYFILE_ALIAS, KEYFILE_PASSPHRASE = "worker", "rehearsal passphrase"
TINY_HPARAMS = {"hidden": [16], "epochs": 1, "batch_size": 128}
DEPOSIT = 2 * 10**16
REWARD = 10**16 + 2  # not a multiple of 3: an agreed task leaves the requester 1 wei of dust


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict[str, str]:
    """The parties' environment: this interpreter's tools first, and this checkout's plugin."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Anvil:
    """An anvil node with a block time on a free loopback port, for the session."""

    def __init__(self, folder: Path, block_time: int = 1):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "anvil.log"
        anvil = shutil.which("anvil", path=_environment()["PATH"] + os.pathsep +
                             str(REPO / ".tools" / "node_modules" / ".bin"))
        if anvil is None:
            raise RuntimeError("anvil is not on PATH (make env installs it under .tools)")
        self.process = subprocess.Popen(
            [anvil, "--host", "127.0.0.1", "--port", str(self.port), "--block-time",
             str(block_time), "--accounts", str(ACCOUNTS), "--silent"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        from web3 import Web3

        self.web3 = Web3(Web3.HTTPProvider(self.uri))
        deadline = time.monotonic() + 30
        while not self._up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"anvil did not start: {self.log.read_text()}")
            time.sleep(0.2)

    def _up(self) -> bool:
        try:
            return self.web3.is_connected()
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def stop(self) -> None:
        stop(self.process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Party:
    """One participant: an account and a working directory (an ape project of its own, with its
    state folder inside), like a machine of its own."""

    name: str
    account: int
    folder: Path
    stranger: bool = False  # its processes get no credentials nor leniency from this one's

    @cached_property
    def _key(self):
        from eth_account import Account

        Account.enable_unaudited_hdwallet_features()
        return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{self.account}")

    @property
    def address(self) -> str:
        return self._key.address

    def log(self, label: str) -> Path:
        return self.folder / f"{label}.log"

    def start(self, command: list[str], label: str, **env: str) -> subprocess.Popen:
        inherited = _environment()
        if self.stranger:  # what it needs is in its own folder and config
            inherited = {name: value for name, value in inherited.items()
                         if not name.startswith("AWS_") and name != "APE_CROWDML_ALLOW_LOCAL_URIS"}
        return subprocess.Popen(command, cwd=self.folder, env={**inherited, **env},
                                stdin=subprocess.DEVNULL, stdout=self.log(label).open("w"),
                                stderr=subprocess.STDOUT)

    def keyfile(self) -> dict[str, str]:
        """Import this party's key as ape keyfile account `KEYFILE_ALIAS` into an ape data folder
        of its own (once); returns the environment that lets it sign unattended."""
        env = {"APE_DATA_FOLDER": str(self.folder / "ape-data"),
               f"APE_ACCOUNTS_{KEYFILE_ALIAS}_PASSPHRASE": KEYFILE_PASSPHRASE}
        if not (self.folder / "ape-data" / "accounts" / f"{KEYFILE_ALIAS}.json").exists():
            script = ("import sys; from ape_accounts import import_account_from_private_key as i; "
                      "i(*sys.argv[1:])")
            subprocess.run([sys.executable, "-c", script, KEYFILE_ALIAS, KEYFILE_PASSPHRASE,
                            self._key.key.hex()], env={**_environment(), **env},
                           cwd=self.folder, check=True, capture_output=True)
        return env

    def agent(self, board: str, tasks: int, label: str = "agent",
              warm_jobs: bool = False) -> subprocess.Popen:
        """`ape crowdml agent`, the product's worker, as it would run on a worker's machine:
        a keyfile account signing unattended."""
        return self.start([str(BIN / "ape"), "crowdml", "agent", "--tasks", str(tasks),
                           "--poll", "0.5", "--board", board, "--account", KEYFILE_ALIAS,
                           "--autosign", "--network", NETWORK, "-v", "INFO",
                           "--warm-jobs" if warm_jobs else "--cold-jobs"], label,
                          **self.keyfile())

    def actor(self, script: str, *args, label: str | None = None) -> subprocess.Popen:
        """One of the scripts in actors/ (a requester, an adversary), run in this party's folder."""
        return self.start([sys.executable, str(ACTORS / script), "--account", str(self.account),
                           *map(str, args)], label or script.removesuffix(".py"))


class Rehearsal:
    """The shared pieces: the node and the artifact store; hands out parties and accounts."""

    def __init__(self, root: Path, anvil: Anvil, store: str | None = None,
                 own_buckets: bool = False):
        """`store`: an fsspec URL every party can reach (the processes inherit this one's
        environment, AWS_* included); default, a folder under `root`. With `own_buckets`, each
        worker delivers into a bucket of its own (its own S3 server and key pair, read by
        everyone over HTTP: tests/store_server.py), as between strangers."""
        self.root = root
        self.anvil = anvil
        self.own_buckets = own_buckets
        self._servers = contextlib.ExitStack()  # the workers' own buckets, for the session
        if store is None:
            (root / "store").mkdir(parents=True, exist_ok=True)
        self.store = store or str(root / "store")
        self._accounts = iter(range(ACCOUNTS))
        self._lock = threading.Lock()  # rehearsals may run side by side, in threads
        self.observer = Observer(anvil.web3)

    def close(self) -> None:
        self._servers.close()

    def party(self, name: str, worker: bool = False) -> Party:
        """A party's folder and config. With `own_buckets`, it gets a bucket of its own: a
        worker's result store; the requester's public files (bucket.json says where)."""
        folder = self.root / name
        folder.mkdir(parents=True)
        settings = {}
        if self.own_buckets:
            from store_server import public_bucket

            bucket = self._servers.enter_context(public_bucket(folder / "s3"))
            if worker:
                settings = bucket.worker_settings()
            else:
                (folder / "bucket.json").write_text(json.dumps(
                    {"url": bucket.url, "options": bucket.options,
                     "public_url": bucket.public_url}))
        config = {
            "name": name,
            "default_ecosystem": "ethereum",
            "foundry": {"host": self.anvil.uri},
            "test": {"number_of_accounts": ACCOUNTS},
            "crowdml": {
                "state_folder": str(folder / "state"),
                # Its own folder, between strangers; else the store every party shares.
                "artifact_store": None if self.own_buckets else self.store,
                "cache_folder": str(folder / "cache"),
                # Jobs are found by digest among the ones the package ships.
                "jobs_folder": [],
                "worker": settings,
                # A folder store (the benchmark's) is one disk the parties share.
                "allow_local_uris": "://" not in self.store and not self.own_buckets,
            },
        }
        (folder / "ape-config.yaml").write_text(yaml.safe_dump(config))
        with self._lock:
            return Party(name, next(self._accounts), folder, stranger=self.own_buckets)


class Observer:
    """Reads the board with web3 only: what any stranger sees on the chain."""

    def __init__(self, web3):
        self.web3 = web3
        self.abi = json.loads((REPO / "ape_crowdml" / "TaskBoard.json").read_text())["abi"]

    def board(self, address: str):
        return self.web3.eth.contract(address=self.web3.to_checksum_address(address),
                                      abi=self.abi)

    def logs(self, board, event: str, task_id: int | None = None) -> list:
        filters = {} if task_id is None else {"task_id": task_id}
        return list(getattr(board.events, event)().get_logs(from_block=0,
                                                            argument_filters=filters))

    def claims(self, board, task_id: int) -> dict[str, int]:
        claims: dict[str, int] = {}
        for log in self.logs(board, "Claimed", task_id):
            claims[log.args.account] = claims.get(log.args.account, 0) + log.args.amount
        return claims


@dataclass
class Expected:
    """What the paper's clauses pay for one task, from what each seat revealed."""

    phase: str
    payout: dict[str, int] = field(default_factory=dict)  # address -> wei claimed
    forfeited: int = 0


def expected_payouts(requester: str, reveals: dict[str, bytes | None], trivial: set[bytes],
                     reward: int, deposit: int) -> Expected:
    """The paper's clauses (PROTOCOL.md), written out independently of the board: `reveals` maps
    each seat to the result it opened, or None if it committed nothing or opened nothing."""
    n = len(reveals)
    valid = {w: r for w, r in reveals.items() if r is not None and r not in trivial}
    if len(valid) == n and len(set(valid.values())) == 1:
        share = reward // n
        pay = {w: deposit + share for w in reveals}
        return Expected("AGREED", {**pay, requester: reward - n * share}, 0)
    if len(valid) == n:
        return Expected("DISAGREED", {**{w: deposit // 2 for w in reveals}, requester: reward},
                        n * deposit // 2)
    pay = {w: deposit // 2 if w in valid else 0 for w in reveals}
    return Expected("FAILED", {**pay, requester: reward},
                    n * deposit - sum(pay.values()))


def wait_for(condition, what: str, timeout: float, processes: dict[str, subprocess.Popen],
             logs: dict[str, Path], poll: float = 0.25) -> None:
    """Wait until `condition()`; fail with every party's log if a process dies first (exit 0
    is fine: a party may be done) or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        failed = [name for name, p in processes.items() if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            reason = f"{', '.join(failed)} exited" if failed else f"timed out after {timeout} s"
            raise AssertionError(f"{reason} waiting for {what}\n{tails(logs)}")
        time.sleep(poll)


def tails(logs: dict[str, Path], lines: int = 25) -> str:
    out = []
    for name, path in logs.items():
        text = path.read_text().splitlines() if path.exists() else ["(no log)"]
        out.append(f"--- {name} ({path})\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


HONEST = "honest"  # an `ape crowdml agent` process; every other strategy is actors/adversary.py
PHASES = {6: "AGREED", 7: "DISAGREED", 8: "FAILED", 9: "ABORTED", 10: "COIN_WITHHELD"}
COMMITTED = 2  # TaskBoard.worker_status


@dataclass
class Played:
    """A finished rehearsal: the board, its tasks and who sat where."""

    board: str
    tasks: list[int]
    requester: Party
    workers: list[tuple[Party, str]]  # (party, strategy)
    started: float
    ended: float
    logs: dict[str, Path]
    # label -> (peak resident bytes of the process alone, of it and its job processes together)
    peak_rss: dict[str, tuple[int, int]] = field(default_factory=dict)


def play(rehearsal: Rehearsal, label: str, strategies: list[str], *, tasks: int = 1,
         join_blocks: int = 60, commit_blocks: int = 90, reveal_blocks: int = 30,
         timeout: float = 420, sample_memory: bool = False, warm_jobs: bool = False) -> Played:
    """Run one requester process and a worker process per strategy on a board of their own, until
    the requester has seen every task end and claimed, and every worker process has exited."""
    requester = rehearsal.party(f"{label}-requester")
    processes: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {"requester": requester.log("requester")}
    processes["requester"] = requester.actor(
        "requester.py", "--tasks", tasks, "--workers", len(strategies), "--reward", REWARD,
        "--deposit", DEPOSIT, "--join-blocks", join_blocks, "--commit-blocks", commit_blocks,
        "--reveal-blocks", reveal_blocks)
    try:
        board_file = requester.folder / "board.json"
        wait_for(lambda: board_file.exists() and "waiting" in logs["requester"].read_text(),
                 "the board", 120, processes, logs)
        board = json.loads(board_file.read_text())["board"]
        workers = []
        for i, strategy in enumerate(strategies):
            party = rehearsal.party(f"{label}-worker{i + 1}-{strategy}", worker=True)
            name = f"worker{i + 1} ({strategy})"
            workers.append((party, strategy))
            logs[name] = party.log("worker")
            processes[name] = (party.agent(board, tasks, label="worker", warm_jobs=warm_jobs)
                               if strategy == HONEST
                               else party.actor("adversary.py", strategy, "--board", board,
                                                label="worker"))
        wait_for(lambda: all("watching board" in logs[n].read_text() for n in logs
                             if n != "requester"), "the workers to start", 180, processes, logs)
        (requester.folder / "go").touch()
        peaks: dict[str, tuple[int, int]] = {}
        crashing = [(n, p) for n, (p, s) in zip(list(processes)[1:], workers) if s == "crash"]
        deadline = time.monotonic() + timeout
        for name, party in crashing:
            _crash_and_restart(rehearsal, board, name, party, processes, logs, deadline)
        result_file = requester.folder / "result.json"

        def finished() -> bool:
            if sample_memory:
                for n, process in processes.items():
                    own, family = peaks.get(n, (0, 0))
                    now_own, now_family = tree_rss(process.pid)
                    peaks[n] = max(own, now_own), max(family, now_family)
            return result_file.exists() and all(p.poll() is not None
                                                for p in processes.values())

        wait_for(finished, "every task to end and every party to finish",
                 max(deadline - time.monotonic(), 1), processes, logs)
        result = json.loads(result_file.read_text())
        return Played(board, result["tasks"], requester, workers, result["started"],
                      result["ended"], logs, peaks)
    finally:
        for process in processes.values():
            stop(process)


def _crash_and_restart(rehearsal, board, name, party, processes, logs, deadline) -> None:
    """SIGKILL the worker as soon as its commitment is on chain, then start the product's agent
    on the same state folder and account: it must reveal from the stored salt."""
    contract = rehearsal.observer.board(board)

    def committed() -> bool:
        count = contract.functions.task_count().call()
        return any(contract.functions.worker_status(t, party.address).call() == COMMITTED
                   for t in range(1, count + 1))

    wait_for(committed, f"{name}'s commit", deadline - time.monotonic(), processes, logs,
             poll=0.1)
    processes[name].send_signal(signal.SIGKILL)
    processes[name].wait()
    restarted = f"{name} restarted"
    logs[restarted] = party.log("worker-restarted")
    processes[restarted] = party.agent(board, 1, label="worker-restarted")
    del processes[name]


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of a process alone, and with its descendants (its job processes), now."""
    import psutil

    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for member in family:
        try:
            sizes.append(member.memory_info().rss)
        except psutil.NoSuchProcess:
            sizes.append(0)
    return sizes[0], sum(sizes)


def check_payouts(observer: Observer, played: Played) -> list[Expected]:
    """Assert, for each task, that every party got exactly what the paper's clauses pay for the
    seats' strategies, that nothing is owed to anyone, and that the board holds only the
    unswept forfeits. Returns what was expected, task by task."""
    board = observer.board(played.board)
    requester = played.requester.address
    outcomes = []
    for task in played.tasks:
        view = board.functions.task(task).call()
        spec, data = view[1], view[2]
        trivial = {bytes(32), spec, data}
        revealed = {log.args.worker: log.args.result for log in observer.logs(board, "Revealed",
                                                                              task)}
        honest = {revealed[p.address] for p, s in played.workers
                  if s in (HONEST, "crash") and p.address in revealed}
        assert len(honest) <= 1, f"task {task}: honest workers revealed different results {honest}"
        true = next(iter(honest), None)
        by_strategy = {
            p.address: {HONEST: true, "crash": true, "junk": revealed.get(p.address),
                        "trivial": spec}.get(s) for p, s in played.workers}
        # Each seat opened exactly what its strategy says (nothing for noshow, copycat, late).
        assert {w: r for w, r in by_strategy.items() if r is not None} == revealed, task
        if any(s == "junk" for _, s in played.workers):
            assert true not in {revealed[p.address] for p, s in played.workers if s == "junk"}
        expected = expected_payouts(requester, by_strategy, trivial, REWARD, DEPOSIT)
        phase = PHASES.get(board.functions.phase(task).call())
        assert phase == expected.phase, f"task {task}: {phase}, expected {expected.phase}"
        claims = observer.claims(board, task)
        assert claims == {a: v for a, v in expected.payout.items() if v}, f"task {task}"
        settled = observer.logs(board, "Settled", task)
        assert [log.args.forfeited for log in settled] == [expected.forfeited], task
        paid_in = REWARD + len(played.workers) * DEPOSIT
        assert sum(claims.values()) + expected.forfeited == paid_in, task
        for address in {requester, *(p.address for p, _ in played.workers)}:
            assert board.functions.owed(task, address).call() == 0, (task, address)
        outcomes.append(expected)
    # The board holds exactly the forfeits of its tasks (none swept here), nothing else.
    forfeits = sum(e.forfeited for e in outcomes)
    assert board.functions.forfeited().call() == forfeits
    assert observer.web3.eth.get_balance(board.address) == forfeits
    return outcomes
