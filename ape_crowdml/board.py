"""`Board`: one deployed TaskBoard, its views decoded, its transactions with one-line errors.

The contract type ships inside the package (`TaskBoard.json`, compiled from
contracts/TaskBoard.vy by `ape run export_taskboard`), so the plugin works in any ape project
with the bytecode this repository tests. Commitments and coin hashes are computed here, locally: a result never reaches a
node before its reveal.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from eth_abi import encode

from crowdml_compute.digest import keccak_digest
from . import preflight
from .logs import KeptLogs
from .states import Phase, TaskInfo, WorkerStatus  # noqa: F401 - importers name them here too
from .errors import (BoardNotConfigured, CrowdmlError, InsufficientFunds, TaskRejected,
                     UnknownTask, first_line)


def commitment(result: bytes, salt: bytes, worker: str, task_id: int) -> bytes:
    """keccak256(abi_encode(result, salt, worker, task_id)), as TaskBoard.commit expects."""
    return keccak_digest(encode(["bytes32", "bytes32", "address", "uint256"],
                                [result, salt, worker, task_id]))


def coin_hash(coin: bytes, salt: bytes) -> bytes:
    """keccak256(abi_encode(coin, salt)), as TaskBoard.publish expects."""
    return keccak_digest(encode(["bytes32", "bytes32"], [coin, salt]))


def hex32(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def check_signing_chain() -> None:
    """The node's own chain id is the one ape signs for; TaskRejected otherwise. ape takes the
    chain id of the network named (`ethereum:local:node` says 1337) rather than the node's, and
    a node of another chain (anvil's 31337) refuses every transaction so signed."""
    from ape import chain

    node = chain.provider.web3.eth.chain_id
    if node != chain.chain_id:
        network = chain.provider.network
        raise TaskRejected(
            f"the node at {getattr(chain.provider, 'uri', 'this provider')} is chain "
            f"{node}, but --network {network.ecosystem.name}:{network.name}:"
            f"{chain.provider.name} signs for chain {chain.chain_id}: name the network of "
            f"chain {node} (anvil: ethereum:local:foundry)")


@contextmanager
def transaction(action: str):
    """Turn ape's errors for a failed transaction into one line that names the action: a call
    that passed its simulation can still fail, when the chain moved on in between. Nothing is
    sent for a node of another chain than the one signed for (`check_signing_chain`)."""
    from ape.exceptions import AccountsError, ContractLogicError, TransactionError

    check_signing_chain()
    try:
        yield
    except ContractLogicError as exc:
        raise TaskRejected(f"{action} refused by the board: {exc.message}") from None
    except (AccountsError, TransactionError) as exc:
        text = first_line(exc)
        if "balance" in text.lower() or "funds" in text.lower():
            raise InsufficientFunds(f"{action}: insufficient funds ({text})") from None
        raise TaskRejected(f"{action} failed: {text}") from None


def mined(action: str, receipt):
    """The receipt of a transaction in a block, its logs with it.

    On a chain that mines on a clock (`anvil --block-time 1`), ape's providers hand back a
    receipt as soon as the node accepted the transaction, before any block holds it (and a
    deployment's address with it): wait for the block instead."""
    from ape import chain

    if receipt.block_number is None or receipt.block_number < 0:
        receipt = chain.provider.get_receipt(receipt.txn_hash)
    if receipt.failed:
        raise TaskRejected(f"{action} failed on chain in block {receipt.block_number}: the chain "
                           "moved on after its simulation; check the task and try again")
    return receipt


def simulate(contract, action: str, method: str, args: tuple, sender, value: int = 0,
             refuser: str = "the board") -> None:
    """eth_call the transaction; TaskRejected with the contract's reason if it would revert.

    On the pending block, the one the transaction lands in at the earliest: on the latest,
    a call at a window's edge would be judged one block early. Through web3 rather than
    ape's `.call()`: ape's providers print the call trace of a reverting call, several
    lines of it, before raising."""
    from ape import chain

    call = {"from": sender.address, "to": contract.address, "value": value,
            "data": getattr(contract, method).encode_input(*args)}
    try:
        chain.provider.web3.eth.call(call, "pending")
    except Exception as exc:
        if (reason := revert_reason(exc)) is None:
            raise
        raise TaskRejected(f"{action} refused by {refuser}: {reason}") from None


def send(contract, action: str, method: str, *args, sender, value: int = 0,
         refuser: str = "the board", fees: dict[str, int] | None = None):
    """Simulate, then send and wait for the block: a refused call sends nothing. `fees` are
    ape's transaction fields `max_fee` and `max_priority_fee`, when capped."""
    simulate(contract, action, method, args, sender, value, refuser)
    with transaction(action):
        return mined(action, getattr(contract, method)(*args, value=value, sender=sender,
                                                       **(fees or {})))


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


class Board:
    """A deployed TaskBoard. `start_block` bounds event scans: the deployment block, by default
    read from the board itself (CREATED_AT), so a board named only by its address is not
    scanned from block 0 on a node that keeps no trace or otterscan index."""

    def __init__(self, address: str, start_block: int | None = None):
        from ape import chain, convert
        from ape.exceptions import ConversionError
        from ape.types import AddressType

        try:
            address = convert(address, AddressType)
        except ConversionError:
            raise BoardNotConfigured(f"the board {address!r} is not an address") from None
        if not chain.provider.get_code(address):
            raise BoardNotConfigured(f"no contract at {address} on chain {chain.chain_id}; "
                                     "deploy one with `ape crowdml deploy`")
        self.address = address
        # Fee caps for this board's transactions (`cap_fees`); none: ape's defaults.
        self.fees: dict[str, int] = {}
        # Our own contract type, replacing any cached for this address: ape keeps contract
        # types of live networks on disk, and a chain re-created by a test (a fork's upstream,
        # the same deployer and nonce) would otherwise merge a board of another version's ABI.
        self.contract = chain.contracts.instance_at(
            address, taskboard_container().contract_type, fetch_from_explorer=False, replace=True)
        self.start_block = self.contract.CREATED_AT() if start_block is None else start_block
        self.logs = KeptLogs(self.contract, self.start_block)

    def __repr__(self) -> str:
        return f"<Board {self.address}>"

    @classmethod
    def deploy(cls, sender, sink: str = NEUTRAL_SINK) -> Board:
        """Deploy a board whose forfeited deposits go to `sink` (by default burned).

        The sink may neither publish nor join (the board refuses it), and workers by default
        refuse a board whose sink is not NEUTRAL_SINK: a requester that collected forfeits
        would profit from sabotaging its own task.
        """
        preflight.check_deploy(sink, sender.address)
        with transaction("deploy"):
            constructor = taskboard_container().constructor
            receipt = mined("deploy", sender.call(
                constructor.serialize_transaction(sink, sender=sender)))
        return cls(receipt.contract_address, start_block=receipt.block_number)

    @property
    def chain_id(self) -> int:
        from ape import chain

        return chain.chain_id

    @cached_property
    def sink(self) -> str:
        """FORFEIT_SINK: where forfeited deposits go; it may neither publish nor join. Immutable
        on chain, so read once per Board (a join consults it twice: policy and pre-flight)."""
        return self.contract.FORFEIT_SINK()

    def cap_fees(self, max_fee: int | None = None, priority_fee: int | None = None) -> None:
        """Send every later transaction with at most `max_fee` wei per gas in all, of which at
        most `priority_fee` to the block's proposer (None leaves ape's default)."""
        if None not in (max_fee, priority_fee) and priority_fee > max_fee:
            raise CrowdmlError(f"the priority fee {priority_fee} wei is above the max fee "
                               f"{max_fee}: no node takes such a transaction")
        caps = {"max_fee": max_fee, "max_priority_fee": priority_fee}
        self.fees = {name: cap for name, cap in caps.items() if cap is not None}

    def _transaction_fees(self) -> dict[str, int]:
        """The caps, with ape's default priority fee kept under a max fee given alone."""
        from ape import chain

        fees = dict(self.fees)
        if "max_fee" in fees and "max_priority_fee" not in fees:
            fees["max_priority_fee"] = min(chain.provider.priority_fee, fees["max_fee"])
        return fees

    def fee_per_gas(self) -> int:
        """The most a transaction sent now may pay per gas: the cap, or else what ape offers
        by default (twice the base fee, plus the priority fee)."""
        from ape import chain

        if "max_fee" in self.fees:
            return self.fees["max_fee"]
        provider = chain.provider
        priority = self.fees.get("max_priority_fee", provider.priority_fee)
        return 2 * provider.base_fee + priority

    def check_fee_cap(self) -> None:
        """TaskRejected while the base fee is above the cap: a transaction sent now would wait
        in the mempool, and its sender with it."""
        from ape import chain

        if "max_fee" in self.fees and chain.provider.base_fee > self.fees["max_fee"]:
            raise TaskRejected(f"the base fee is {chain.provider.base_fee} wei, above the max "
                               f"fee {self.fees['max_fee']}: waiting for it to fall")

    @property
    def head(self) -> int:
        from ape import chain

        return chain.blocks.head.number

    # ------------------------------------------------------------------ views

    def task_count(self) -> int:
        return self.contract.task_count()

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

    def coin(self, task_id: int, *, checked: TaskInfo | None = None) -> bytes:
        """The task's coin; TaskRejected while it is not fixed (or if it never was).
        `checked`: the task as the caller just read it, not read again."""
        phase = (checked or self.task(task_id)).phase
        if phase in (Phase.JOINING, Phase.AWAITING_COIN, Phase.ABORTED, Phase.COIN_WITHHELD):
            raise TaskRejected(f"task {task_id}'s coin is not fixed: it is {phase.label}")
        return bytes(self.contract.coin_of(task_id))

    def result(self, task_id: int) -> bytes:
        """The agreed result digest; TaskRejected unless the task ended agreed."""
        phase = self.task(task_id).phase
        if phase != Phase.AGREED:
            raise TaskRejected(f"task {task_id} has no agreed result: it is {phase.label}")
        return bytes(self.contract.result_of(task_id))

    def owed(self, task_id: int, account: str) -> int:
        return self.contract.owed(task_id, account)

    def published_between(self, first: int, last: int) -> set[int]:
        """The ids of the tasks published in blocks first..last (one eth_getLogs query)."""
        return {log.task_id for log in self.contract.Published.range(first, last + 1)}

    def _events(self, event: str, task_id: int) -> list:
        return self.logs.read(event, task_id=task_id)

    def common_knowledge(self, task: TaskInfo) -> set[bytes]:
        """E_ck: the results the board counts as no submission — the empty digest, the
        task's spec and data digests, and the list published with it.

        Built from the Published event rather than by asking the `is_trivial` view about a
        result: that would send the result to a node before its reveal.
        """
        published = self.published(task.task_id)
        return {NO_DIGEST, task.spec, task.data, *(bytes(d) for d in published.trivial)}

    def published(self, task_id: int):
        """The task's Published event: its E_ck list and spec URI live only there."""
        published = list(self._events("Published", task_id))
        if not published:
            raise TaskRejected(f"task {task_id}'s Published event is not after block "
                               f"{self.start_block}; its E_ck list and spec URI cannot be read")
        return published[0]

    def spec_uri(self, task_id: int) -> str:
        """Where the requester says the task's spec is ("" if it named no place)."""
        return self.published(task_id).spec_uri

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

    def announcements(self, task_id: int) -> list[tuple[str, str]]:
        """(worker, URI) of each place an agreed worker said it uploaded the result, in order."""
        return [(log.worker, log.uri) for log in self._events("Announced", task_id)]

    def claims(self, task_id: int) -> dict[str, int]:
        """account -> wei claimed."""
        return {log.account: log.amount for log in self._events("Claimed", task_id)}

    # ------------------------------------------------------------------ transactions
    #
    # Every state-changing call goes the same way: the local checks of `preflight` (no secret
    # involved), then a simulation of the exact transaction (an eth_call from the sender), and
    # only then the transaction. A refused call sends nothing: no gas spent, no nonce used, and
    # no result or coin opening in a failed transaction's calldata for others to read.

    def _next_block(self) -> int:
        return self.head + 1

    def _send(self, action: str, method: str, *args, sender, value: int = 0):
        self.check_fee_cap()
        return send(self.contract, action, method, *args, sender=sender, value=value,
                    fees=self._transaction_fees())

    def publish(self, sender, *, spec: bytes, data: bytes, workers: int, deposit: int,
                reward: int, join_blocks: int, commit_blocks: int, reveal_blocks: int,
                coin_hash: bytes = NO_DIGEST, trivial: tuple[bytes, ...] = (),
                spec_uri: str = "") -> int:
        """Publish a task escrowing `reward`; returns its id (read from the Published event:
        a state-changing call's return value is not reliable on every provider). `spec_uri`,
        where workers fetch the spec, goes into the event only."""
        preflight.check_amounts(
            reward=reward, deposit=deposit, workers=workers, balance=sender.balance,
            windows={"join": join_blocks, "commit": commit_blocks, "reveal": reveal_blocks})
        receipt = self._send("publish", "publish", spec, data, workers, deposit, join_blocks,
                             commit_blocks, reveal_blocks, coin_hash, list(trivial), spec_uri,
                             sender=sender, value=reward)
        return receipt.decode_logs(self.contract.Published)[0].task_id

    def join(self, sender, task_id: int, *, checked: TaskInfo | None = None):
        """Lock the deposit. `checked`: the task as the caller read it and checked its join
        against (`Worker.check_terms`), not read or checked again; the simulation still is."""
        task = checked
        if task is None:
            task = self.task(task_id)
            preflight.check_join(task, self._next_block(),
                                 self.worker_status(task_id, sender.address),
                                 is_sink=sender.address == self.sink, balance=sender.balance)
        return self._send(f"join task {task_id}", "join", task_id, sender=sender,
                          value=task.deposit)

    def check_release_coin(self, sender, task_id: int) -> TaskInfo:
        """The release checks alone, before the opening is even looked up."""
        task = self.task(task_id)
        preflight.check_release_coin(task, self._next_block(), sender.address)
        return task

    def release_coin(self, sender, task_id: int, coin: bytes, salt: bytes):
        """Open the requester's coin. The opening reaches a node (even as a simulation) only
        after the local checks say the board is due to accept it."""
        task = self.check_release_coin(sender, task_id)
        if coin_hash(coin, salt) != task.coin_hash:
            raise TaskRejected(f"this coin opening does not match task {task_id}'s coin hash")
        return self._send(f"release the coin of task {task_id}", "release_coin", task_id, coin,
                          salt, sender=sender)

    def check_commit(self, sender, task_id: int, min_blocks: int = 1) -> TaskInfo:
        """The commit checks alone, for a worker about to train (see `preflight`)."""
        task = self.task(task_id)
        preflight.check_commit(task, self._next_block(),
                               self.worker_status(task_id, sender.address), min_blocks)
        return task

    def commit(self, sender, task_id: int, commitment_: bytes):
        self.check_commit(sender, task_id)
        return self._send(f"commit to task {task_id}", "commit", task_id, commitment_,
                          sender=sender)

    def commitment_of(self, task_id: int, worker: str) -> bytes | None:
        """The commitment `worker` put on chain for the task, from its Committed event."""
        logs = self.logs.read("Committed", task_id=task_id, worker=worker)
        return next((bytes(log.commitment) for log in logs), None)

    def check_reveal(self, sender, task_id: int) -> TaskInfo:
        """The reveal checks alone, before the salt is even looked up."""
        task = self.task(task_id)
        preflight.check_reveal(task, self._next_block(),
                               self.worker_status(task_id, sender.address))
        return task

    def reveal(self, sender, task_id: int, result: bytes, salt: bytes):
        """Open a commitment. Like the coin, the opening reaches a node only once the local
        checks say the reveal is due, and only if it opens the commitment on chain."""
        self.check_reveal(sender, task_id)
        if commitment(result, salt, sender.address, task_id) != self.commitment_of(
                task_id, sender.address):
            raise TaskRejected(f"this opening does not match {sender.address}'s commitment on "
                               f"task {task_id}")
        return self._send(f"reveal for task {task_id}", "reveal", task_id, result, salt,
                          sender=sender)

    def settle(self, sender, task_id: int) -> Phase:
        preflight.check_settle(self.task(task_id), self._next_block())
        self._send(f"settle task {task_id}", "settle", task_id, sender=sender)
        return self.phase(task_id)

    def claim(self, sender, task_id: int) -> int:
        """Withdraw what the task owes `sender`; returns the wei paid."""
        preflight.check_claim(self.task(task_id), self.owed(task_id, sender.address))
        receipt = self._send(f"claim from task {task_id}", "claim", task_id, sender=sender)
        return receipt.decode_logs(self.contract.Claimed)[0].amount

    def announce(self, sender, task_id: int, uri: str):
        """Say on chain where `sender`, a worker of the task's agreed roster, uploaded the
        result."""
        preflight.check_announce(self.task(task_id), self.worker_status(task_id, sender.address),
                                 uri)
        return self._send(f"announce the result of task {task_id}", "announce", task_id, uri,
                          sender=sender)

    def abort(self, sender, task_id: int) -> Phase:
        preflight.check_abort(self.task(task_id), self._next_block(), sender.address)
        self._send(f"abort task {task_id}", "abort", task_id, sender=sender)
        return self.phase(task_id)


def revert_reason(exc: BaseException) -> str | None:
    """The board's reason if `exc` is a simulated call's revert, else None.

    web3 raises ContractLogicError for a node's revert (anvil, a live node); ape's local test
    chain, eth-tester, raises TransactionFailed. Both say "execution reverted: <reason>"."""
    from web3.exceptions import ContractLogicError

    reverts: tuple[type, ...] = (ContractLogicError,)
    try:
        from eth_tester.exceptions import TransactionFailed

        reverts += (TransactionFailed,)
    except ImportError:  # eth-tester comes with ape's test provider, not with every install
        pass
    if not isinstance(exc, reverts):
        return None
    text = str(exc.args[0]) if exc.args else ""
    return text.removeprefix("execution reverted").lstrip(": ") or "reverted without a reason"

