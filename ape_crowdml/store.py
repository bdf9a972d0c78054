"""Durable local state: the secrets a party needs to finish a task, written before they matter.

A worker's salt and result, and a requester's coin opening, are the only way to open a
commitment; losing them loses the deposit (or, for the coin, the reward). So every secret is
committed to sqlite, with `synchronous=FULL` (fsync on commit), BEFORE the transaction that
depends on it is sent. Rows are keyed by chain id and board address, so one store serves every
network.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import StateNotWritable

SCHEMA = """
CREATE TABLE IF NOT EXISTS boards (
    chain_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    deployed_block INTEGER NOT NULL,
    PRIMARY KEY (chain_id, address)
);
CREATE TABLE IF NOT EXISTS coins (
    chain_id INTEGER NOT NULL,
    board TEXT NOT NULL,
    coin_hash BLOB NOT NULL,
    account TEXT NOT NULL,
    coin BLOB NOT NULL,
    salt BLOB NOT NULL,
    PRIMARY KEY (chain_id, board, coin_hash)
);
CREATE TABLE IF NOT EXISTS results (
    chain_id INTEGER NOT NULL,
    board TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    account TEXT NOT NULL,
    spec BLOB NOT NULL,
    coin BLOB NOT NULL,
    result BLOB NOT NULL,
    salt BLOB NOT NULL,
    artifact BLOB NOT NULL,
    artifact_store TEXT NOT NULL,
    PRIMARY KEY (chain_id, board, task_id, account)
);
CREATE TABLE IF NOT EXISTS joins (
    chain_id INTEGER NOT NULL,
    board TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    account TEXT NOT NULL,
    version TEXT NOT NULL,
    code TEXT NOT NULL,
    PRIMARY KEY (chain_id, board, task_id, account)
);
CREATE TABLE IF NOT EXISTS summaries (
    chain_id INTEGER NOT NULL,
    board TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    account TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (chain_id, board, task_id, account)
);
CREATE TABLE IF NOT EXISTS result_keys (
    public BLOB PRIMARY KEY,
    secret BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_scans (
    chain_id INTEGER NOT NULL,
    board TEXT NOT NULL,
    account TEXT NOT NULL,
    next_block INTEGER NOT NULL,
    PRIMARY KEY (chain_id, board, account)
);
CREATE TABLE IF NOT EXISTS agent_tasks (
    chain_id INTEGER NOT NULL,
    board TEXT NOT NULL,
    account TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    PRIMARY KEY (chain_id, board, account, task_id)
);
"""


@dataclass(frozen=True)
class CoinOpening:
    coin: bytes
    salt: bytes


@dataclass(frozen=True)
class StoredResult:
    spec: bytes  # on-chain spec digest the result was computed for
    coin: bytes  # the coin it was computed with
    result: bytes  # keccak256(artifact): what the commitment hides
    salt: bytes
    artifact: bytes  # canonical bytes; uploaded only after reveal, or others could copy it
    artifact_store: str  # URL the artifact goes to once revealed


@dataclass(frozen=True)
class Joined:
    """What joined a task: the job must run under the same compute code, which an upgrade
    changes, so a worker that upgraded meanwhile is told which version to reinstall."""

    version: str  # the ape-crowdml distribution's version
    code: str  # its compute_code_digest(), which the task's spec profile names


class Store:
    """One sqlite file under the state folder, created by the first write: commands that only
    read leave no folder behind.

    Each secret is handed only to the account that stored it: another account using the same
    folder (a requester and its workers on one machine) gets None, as if it were not there.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "state.sqlite3"
        self._db: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not self.path.exists():
                return None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None)
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise self._unwritable(exc) from None
            self._db = db
        return self._db

    def _unwritable(self, exc: Exception) -> StateNotWritable:
        return StateNotWritable(
            f"cannot write the state folder {self.path.parent} ({exc}): make it writable "
            "(or free its disk); nothing that needs it is sent until then")

    def _write(self, sql: str, args: tuple, *more: tuple[str, tuple]) -> None:
        # One transaction per write: when this returns, the rows are on disk, all or none.
        db = self._connection(create=True)
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                for statement, values in ((sql, args), *more):
                    db.execute(statement, values)
        except sqlite3.OperationalError as exc:
            raise self._unwritable(exc) from None

    def _read_one(self, sql: str, args: tuple) -> tuple | None:
        db = self._connection(create=False)
        return None if db is None else db.execute(sql, args).fetchone()

    def add_board(self, chain_id: int, address: str, deployed_block: int) -> None:
        self._write("INSERT OR REPLACE INTO boards VALUES (?, ?, ?)",
                    (chain_id, address, deployed_block))

    def boards(self, chain_id: int) -> list[tuple[str, int]]:
        """(address, deployed block) of boards deployed from here, newest first."""
        db = self._connection(create=False)
        if db is None:
            return []
        rows = db.execute(
            "SELECT address, deployed_block FROM boards WHERE chain_id = ? "
            "ORDER BY deployed_block DESC, rowid DESC", (chain_id,))
        return list(rows)

    def save_coin(self, chain_id: int, board: str, coin_hash: bytes, account: str,
                  opening: CoinOpening) -> None:
        self._write("INSERT OR REPLACE INTO coins VALUES (?, ?, ?, ?, ?, ?)",
                    (chain_id, board, coin_hash, account, opening.coin, opening.salt))

    def coin(self, chain_id: int, board: str, coin_hash: bytes,
             account: str) -> CoinOpening | None:
        """The opening `account` stored for `coin_hash`; None for any other account."""
        row = self._read_one(
            "SELECT coin, salt FROM coins WHERE chain_id = ? AND board = ? AND coin_hash = ? "
            "AND account = ?", (chain_id, board, coin_hash, account))
        return CoinOpening(*row) if row else None

    def save_result(self, chain_id: int, board: str, task_id: int, account: str,
                    stored: StoredResult, summary: dict | None = None) -> None:
        """The result, with the job's summary of its run (transcript, per-epoch and final
        metrics) when there is one, in one transaction."""
        key = (chain_id, board, task_id, account)
        more = [] if summary is None else [(
            "INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?)",
            (*key, json.dumps(summary, sort_keys=True)))]
        self._write(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, stored.spec, stored.coin, stored.result, stored.salt, stored.artifact,
             stored.artifact_store), *more)

    def summary(self, chain_id: int, board: str, task_id: int, account: str) -> dict | None:
        """The job's summary of the run `account` stored with its result, if any."""
        row = self._read_one("SELECT summary FROM summaries WHERE chain_id = ? AND board = ? "
                             "AND task_id = ? AND account = ?", (chain_id, board, task_id, account))
        return json.loads(row[0]) if row else None

    def result(self, chain_id: int, board: str, task_id: int, account: str) -> StoredResult | None:
        """The result and salt `account` stored for the task; None for any other account."""
        row = self._read_one(
            "SELECT spec, coin, result, salt, artifact, artifact_store FROM results "
            "WHERE chain_id = ? AND board = ? AND task_id = ? AND account = ?",
            (chain_id, board, task_id, account))
        return StoredResult(*row) if row else None

    def save_join(self, chain_id: int, board: str, task_id: int, account: str,
                  joined: Joined) -> None:
        self._write("INSERT OR REPLACE INTO joins VALUES (?, ?, ?, ?, ?, ?)",
                    (chain_id, board, task_id, account, joined.version, joined.code))

    def joined(self, chain_id: int, board: str, task_id: int, account: str) -> Joined | None:
        """What `account` joined the task with, if it joined it from this folder."""
        row = self._read_one("SELECT version, code FROM joins WHERE chain_id = ? AND board = ? "
                             "AND task_id = ? AND account = ?", (chain_id, board, task_id, account))
        return Joined(*row) if row else None

    def joins(self, chain_id: int, board: str, account: str) -> dict[int, Joined]:
        """Every task `account` joined on the board from this folder."""
        db = self._connection(create=False)
        if db is None:
            return {}
        rows = db.execute("SELECT task_id, version, code FROM joins WHERE chain_id = ? AND "
                          "board = ? AND account = ?", (chain_id, board, account))
        return {task_id: Joined(version, code) for task_id, version, code in rows}

    # A requester's result keys: a spec names the public half, workers seal the agreed result
    # to it, and only this folder's secret half opens it. Made before any spec names it.

    def new_result_key(self) -> bytes:
        """Make and store a fresh result key pair; returns its public half."""
        from .delivery import new_result_key

        public, secret = new_result_key()
        self._write("INSERT INTO result_keys VALUES (?, ?)", (public, secret))
        return public

    def result_key(self, public: bytes) -> bytes | None:
        """The secret half of the result key `public`, if this folder made it."""
        row = self._read_one("SELECT secret FROM result_keys WHERE public = ?", (public,))
        return row[0] if row else None

    # An agent's place in the board's events, so that a restart neither rescans the board from
    # its creation nor forgets the tasks it found before.

    def agent_scan(self, chain_id: int, board: str, account: str) -> tuple[int | None, set[int]]:
        """(the next block to scan or None, the tasks still followed) of `account`'s agent."""
        db = self._connection(create=False)
        if db is None:
            return None, set()
        key = (chain_id, board, account)
        row = db.execute("SELECT next_block FROM agent_scans WHERE chain_id = ? AND board = ? "
                         "AND account = ?", key).fetchone()
        tasks = db.execute("SELECT task_id FROM agent_tasks WHERE chain_id = ? AND board = ? "
                           "AND account = ?", key)
        return (row[0] if row else None), {task_id for (task_id,) in tasks}

    def save_agent_scan(self, chain_id: int, board: str, account: str, next_block: int,
                        found: set[int]) -> None:
        """Blocks before `next_block` are scanned, and `found` are the tasks they published."""
        key = (chain_id, board, account)
        self._write("INSERT OR REPLACE INTO agent_scans VALUES (?, ?, ?, ?)", (*key, next_block),
                    *[("INSERT OR IGNORE INTO agent_tasks VALUES (?, ?, ?, ?)", (*key, task_id))
                      for task_id in sorted(found)])

    def forget_agent_task(self, chain_id: int, board: str, account: str, task_id: int) -> None:
        self._write("DELETE FROM agent_tasks WHERE chain_id = ? AND board = ? AND account = ? "
                    "AND task_id = ?", (chain_id, board, account, task_id))
