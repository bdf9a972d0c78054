"""`Board`: one deployed TaskBoard, its views decoded, its transactions with one-line errors.

The contract type ships inside the package (`TaskBoard.json`, compiled from
contracts/TaskBoard.vy by `ape run export_taskboard`), so the plugin works in any ape project
with the bytecode this repository tests. Commitments and coin hashes are computed here, locally: a result never reaches a
node before its reveal.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from eth_abi import encode
from eth_utils import to_checksum_address

from .digest import keccak_digest
from .errors import BoardNotConfigured, InsufficientFunds, TaskRejected, UnknownTask, first_line


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


def commitment(result: bytes, salt: bytes, worker: str, task_id: int) -> bytes:
    """keccak256(abi_encode(result, salt, worker, task_id)), as TaskBoard.commit expects."""
    return keccak_digest(encode(["bytes32", "bytes32", "address", "uint256"],
                                [result, salt, worker, task_id]))


def coin_hash(coin: bytes, salt: bytes) -> bytes:
    """keccak256(abi_encode(coin, salt)), as TaskBoard.publish expects."""
    return keccak_digest(encode(["bytes32", "bytes32"], [coin, salt]))


def hex32(value: bytes) -> str:
    return "0x" + bytes(value).hex()


@contextmanager
def transaction(action: str):
    """Turn ape's errors for a failed transaction into one line that names the action."""
    from ape.exceptions import AccountsError, ContractLogicError, TransactionError

    try:
        yield
    except ContractLogicError as exc:
        raise TaskRejected(f"{action} refused by the board: {exc.message}") from None
    except (AccountsError, TransactionError) as exc:
        text = first_line(exc)
        if "balance" in text.lower() or "funds" in text.lower():
            raise InsufficientFunds(f"{action}: insufficient funds ({text})") from None
        raise TaskRejected(f"{action} failed: {text}") from None


NO_DIGEST = b"\x00" * 32  # the empty bytes32: no coin hash, and always in E_ck

# Where forfeited deposits go by default: the well-known burn address, whose key nobody holds.
# A sink someone controls turns sabotage into profit for them (a requester that holds a seat,
# reveals junk and collects the honest workers' lost halves), so workers accept only this one
# unless their policy lists others.
NEUTRAL_SINK = "0x000000000000000000000000000000000000dEaD"

PACKAGED_TASKBOARD = Path(__file__).with_name("TaskBoard.json")
# What the plugin needs to deploy and call the board; the compiler's maps stay out.
PACKAGED_FIELDS = {"name", "source_id", "abi", "deployment_bytecode", "runtime_bytecode",
                   "devdoc", "userdoc"}


def taskboard_container():
    """The TaskBoard contract container, from the compiled type shipped with the package."""
    from ape.contracts import ContractContainer
    from ethpm_types import ContractType

    return ContractContainer(ContractType.model_validate_json(PACKAGED_TASKBOARD.read_text()))


def on_local_network() -> bool:
    """On a local chain nobody else makes blocks, so waiting for a deadline means mining."""
    from ape import networks

    return networks.provider.network.name == "local"


class Board:
    """A deployed TaskBoard. `start_block` bounds event scans (the deployment block)."""

    def __init__(self, address: str, start_block: int = 0):
        from ape import chain

        address = to_checksum_address(address)
        if not chain.provider.get_code(address):
            raise BoardNotConfigured(f"no contract at {address} on chain {chain.chain_id}; "
                                     "deploy one with `ape crowdml deploy`")
        self.address = address
        self.start_block = start_block
        self.contract = taskboard_container().at(address)

    def __repr__(self) -> str:
        return f"<Board {self.address}>"

    @classmethod
    def deploy(cls, sender, sink: str = NEUTRAL_SINK) -> Board:
        """Deploy a board whose forfeited deposits go to `sink` (by default burned).

        The sink may neither publish nor join (the board refuses it), and workers by default
        refuse a board whose sink is not NEUTRAL_SINK: a requester that collected forfeits
        would profit from sabotaging its own task.
        """
        from ape import chain

        with transaction("deploy"):
            contract = taskboard_container().deploy(sink, sender=sender)
        # The head is at or after the deployment block, and the board has no events yet.
        return cls(contract.address, start_block=chain.blocks.head.number)

    @property
    def chain_id(self) -> int:
        from ape import chain

        return chain.chain_id

    @property
    def head(self) -> int:
        from ape import chain

        return chain.blocks.head.number

    # ------------------------------------------------------------------ views

    def task_count(self) -> int:
        return self.contract.task_count()

    def sink(self) -> str:
        """Where this board sends forfeited deposits (fixed at deployment)."""
        return self.contract.FORFEIT_SINK()

    def task(self, task_id: int) -> TaskInfo:
        if not 1 <= task_id <= self.task_count():
            raise UnknownTask(f"task {task_id} does not exist on board {self.address} "
                              f"(tasks 1..{self.task_count()})")
        view = self.contract.task(task_id)
        fields = {name: getattr(view, name) for name in TaskInfo.__dataclass_fields__
                  if name != "task_id"}
        fields["phase"] = Phase(fields["phase"])
        for name in ("spec", "data", "coin_hash"):
            fields[name] = bytes(fields[name])
        return TaskInfo(task_id=task_id, **fields)

    def phase(self, task_id: int) -> Phase:
        return Phase(self.contract.phase(task_id))

    def worker_status(self, task_id: int, worker: str) -> WorkerStatus:
        return WorkerStatus(self.contract.worker_status(task_id, worker))

    def coin(self, task_id: int) -> bytes:
        with transaction(f"coin of task {task_id}"):
            return bytes(self.contract.coin_of(task_id))

    def result(self, task_id: int) -> bytes:
        """The agreed result digest; TaskRejected unless the task ended agreed."""
        self.task(task_id)
        with transaction(f"result of task {task_id}"):
            return bytes(self.contract.result_of(task_id))

    def owed(self, task_id: int, account: str) -> int:
        return self.contract.owed(task_id, account)

    def _events(self, event: str, task_id: int):
        return getattr(self.contract, event).range(
            self.start_block, self.head + 1, search_topics={"task_id": task_id})

    def common_knowledge(self, task: TaskInfo) -> set[bytes]:
        """E_ck: the results the board counts as no submission — the empty digest, the
        task's spec and data digests, and the list published with it.

        Built from the Published event rather than by asking the `is_trivial` view about a
        result: that would send the result to a node before its reveal.
        """
        published = list(self._events("Published", task.task_id))
        if not published:
            raise TaskRejected(f"task {task.task_id}'s Published event is not after block "
                               f"{self.start_block}; its E_ck list cannot be read")
        return {NO_DIGEST, task.spec, task.data, *(bytes(d) for d in published[0].trivial)}

    def roster(self, task_id: int) -> list[str]:
        """Workers in joining order."""
        return [log.worker for log in self._events("Joined", task_id)]

    def reveals(self, task_id: int) -> dict[str, tuple[bytes, bool]]:
        """worker -> (revealed result, whether it was trivial)."""
        return {log.worker: (bytes(log.result), log.trivial)
                for log in self._events("Revealed", task_id)}

    def forfeited_by(self, task_id: int) -> int:
        """Wei the task's settlement sent to the forfeit sink (0 before settling)."""
        return sum(log.forfeited for log in self._events("Settled", task_id))

    def claims(self, task_id: int) -> dict[str, int]:
        """account -> wei claimed."""
        return {log.account: log.amount for log in self._events("Claimed", task_id)}

    # ------------------------------------------------------------------ transactions

    def publish(self, sender, *, spec: bytes, data: bytes, workers: int, deposit: int,
                reward: int, join_blocks: int, commit_blocks: int, reveal_blocks: int,
                coin_hash: bytes = NO_DIGEST, trivial: tuple[bytes, ...] = ()) -> int:
        """Publish a task escrowing `reward`; returns its id (read from the Published event:
        a state-changing call's return value is not reliable on every provider)."""
        with transaction("publish"):
            receipt = self.contract.publish(
                spec, data, workers, deposit, join_blocks, commit_blocks, reveal_blocks,
                coin_hash, list(trivial), value=reward, sender=sender)
        return receipt.decode_logs(self.contract.Published)[0].task_id

    def join(self, sender, task_id: int):
        deposit = self.task(task_id).deposit
        with transaction(f"join task {task_id}"):
            return self.contract.join(task_id, value=deposit, sender=sender)

    def release_coin(self, sender, task_id: int, coin: bytes, salt: bytes):
        self.task(task_id)
        with transaction(f"release the coin of task {task_id}"):
            return self.contract.release_coin(task_id, coin, salt, sender=sender)

    def commit(self, sender, task_id: int, commitment_: bytes):
        self.task(task_id)
        with transaction(f"commit to task {task_id}"):
            return self.contract.commit(task_id, commitment_, sender=sender)

    def reveal(self, sender, task_id: int, result: bytes, salt: bytes):
        self.task(task_id)
        with transaction(f"reveal for task {task_id}"):
            return self.contract.reveal(task_id, result, salt, sender=sender)

    def settle(self, sender, task_id: int) -> Phase:
        self.task(task_id)
        with transaction(f"settle task {task_id}"):
            self.contract.settle(task_id, sender=sender)
        return self.phase(task_id)

    def claim(self, sender, task_id: int) -> int:
        """Withdraw what the task owes `sender`; returns the wei paid."""
        self.task(task_id)
        with transaction(f"claim from task {task_id}"):
            receipt = self.contract.claim(task_id, sender=sender)
        return receipt.decode_logs(self.contract.Claimed)[0].amount

    def abort(self, sender, task_id: int) -> Phase:
        self.task(task_id)
        with transaction(f"abort task {task_id}"):
            self.contract.abort(task_id, sender=sender)
        return self.phase(task_id)
