"""What the TaskBoard's views say, decoded: a task's phase, a worker's status on it, and the task
itself. Plain types, shared by the board's wrapper (board.py) and the local checks before each
call (preflight.py), which need no chain."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Phase(IntEnum):
    """TaskBoard.phase(); the names are the ones `status` prints."""

    NONE = 0
    JOINING = 1
    AWAITING_COIN = 2
    COMMIT = 3
    REVEAL = 4
    SETTLEABLE = 5
    AGREED = 6
    DISAGREED = 7
    FAILED = 8
    ABORTED = 9
    COIN_WITHHELD = 10

    def __str__(self) -> str:
        # An IntEnum prints as its number since Python 3.11; a phase reads better by name.
        return self.name

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")

    @property
    def ended(self) -> bool:
        return self >= Phase.AGREED


class WorkerStatus(IntEnum):
    """TaskBoard.worker_status(). A worker that has been paid out reads NONE again."""

    NONE = 0
    JOINED = 1
    COMMITTED = 2
    REVEALED = 3
    TRIVIAL = 4

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TaskInfo:
    """TaskBoard.task(), with the phase decoded."""

    task_id: int
    requester: str
    spec: bytes
    data: bytes
    reward: int
    deposit: int
    workers: int
    join_blocks: int
    commit_blocks: int
    reveal_blocks: int
    coin_hash: bytes
    phase: Phase
    deadline: int
    joined: int
    committed: int
    revealed: int
    valid: int
