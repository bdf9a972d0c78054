"""What can be checked before a transaction without any secret: the task's phase and deadline,
the account's seat, who may call, the amounts. Each check raises TaskRejected naming the
reason and what to do, or returns quietly; `Board` then simulates the exact transaction and only
then sends it.

The checks mirror TaskBoard.vy's asserts; the contract stays the authority (the simulation
catches anything they miss). Their point is twofold: a refusal names the block to wait for, and
a call that carries a secret (reveal, release-coin) reaches a node, even as a simulation, only
when the board is due to accept it.

Deadlines are judged at `next_block`, the block a transaction sent now lands in at the earliest:
the chain's head + 1.
"""

from __future__ import annotations

from .states import Phase, TaskInfo, WorkerStatus
from .errors import InsufficientFunds, TaskRejected

MIN_WORKERS = 2  # TaskBoard.MIN_WORKERS
MAX_WINDOW = 2**24 - 1  # TaskBoard.MAX_WINDOW
MAX_SPEC_URI = 512  # TaskBoard.MAX_SPEC_URI, bytes
# `work` refuses to start with fewer blocks left in the commit window: the commit itself needs
# one, and a job needs time. Two is the floor, not an estimate; a worker that knows its job
# takes longer than the remaining blocks should not start it.
MIN_BLOCKS_TO_WORK = 2
# Gas of a worker's own calls, join + commit + reveal + claim: 174,043 at most in bench/gas.py
# (the join that fills the roster and the first reveal cost more), with 15% to spare for a
# provider's estimate. A join needs the deposit plus this at the fee cap, or the worker could
# lock its deposit and then be unable to pay for the reveal that wins it back.
WORKER_GAS = 200_000


def _ended(task: TaskInfo) -> TaskRejected:
    return TaskRejected(f"task {task.task_id} has ended: {task.phase.label}")


def _awaiting_coin(task: TaskInfo, next_block: int) -> TaskRejected:
    if task.phase == Phase.JOINING:
        return TaskRejected(
            f"task {task.task_id}'s roster is {task.joined}/{task.workers}: work starts once it "
            f"fills and the coin is fixed (the join window ends at block {task.deadline})")
    if next_block > task.deadline:
        return TaskRejected(
            f"task {task.task_id}'s requester did not release the coin by block "
            f"{task.deadline}: abort the task (`ape crowdml abort {task.task_id}`) to be paid")
    return TaskRejected(f"task {task.task_id} awaits the requester's coin: wait for it until "
                        f"block {task.deadline}")


def check_deploy(sink: str, deployer: str) -> None:
    """deploy: a sink the board accepts, and that leaves its deployer able to publish."""
    if int(sink, 16) == 0:
        raise TaskRejected("the forfeit sink cannot be the zero address; "
                           "0x000000000000000000000000000000000000dEaD burns forfeits")
    if sink.lower() == deployer.lower():
        raise TaskRejected("the forfeit sink may neither publish nor join: with this account as "
                           "its sink, every publish from it would fail; name an address no "
                           "party controls")


def check_amounts(*, reward: int, deposit: int, workers: int, windows: dict[str, int],
                  balance: int) -> None:
    """publish: the terms the board accepts, and the reward in the account."""
    if workers < MIN_WORKERS:
        raise TaskRejected(f"a task needs at least {MIN_WORKERS} workers, not {workers}: "
                           "agreement between workers is what the board pays for")
    if reward <= 0:
        raise TaskRejected("the reward must be positive")
    if deposit <= 0 or deposit % 2:
        raise TaskRejected(f"the deposit must be positive and even (the board pays exact halves "
                           f"of it), not {deposit} wei")
    for name, blocks in windows.items():
        if not 0 < blocks <= MAX_WINDOW:
            raise TaskRejected(f"--{name}-blocks must be between 1 and {MAX_WINDOW}, not {blocks}")
    if balance < reward:
        raise InsufficientFunds(f"publish: insufficient funds: the reward is {reward} wei, "
                                f"the account holds {balance}")


def check_spec_uri(uri: str) -> None:
    """publish: a spec URI that fits the Published event (String[MAX_SPEC_URI], in bytes)."""
    if len(uri.encode()) > MAX_SPEC_URI:
        raise TaskRejected(f"the spec URI is {len(uri.encode())} bytes, the board takes at most "
                           f"{MAX_SPEC_URI}: {uri[:60]}…")


def check_shared_uri(uri: str, what: str, local_ok: bool, hint: str = "") -> None:
    """A URI a party on another machine must read: a URL, unless local paths are allowed
    (`allow_local_uris`: by default on ape's embedded test chain only)."""
    from crowdml_compute.data import is_remote

    if not (local_ok or is_remote(uri)):
        raise TaskRejected(f"{what} {uri} is a path on one machine, which a party on another "
                           "cannot read: serve it at a URL (https://, s3://, …)"
                           + (f"; {hint}" if hint else ""))


def check_join(task: TaskInfo, next_block: int, status: WorkerStatus, *, is_sink: bool,
               balance: int, fee_per_gas: int = 0) -> None:
    """join: the seat and window, and the deposit in the account; with `fee_per_gas`, also the
    gas of the worker's calls (WORKER_GAS) at that fee."""
    if task.phase.ended:
        raise _ended(task)
    if status != WorkerStatus.NONE:
        raise TaskRejected(f"this account has already joined task {task.task_id}")
    if task.phase != Phase.JOINING:
        raise TaskRejected(f"task {task.task_id}'s roster is full ({task.workers} workers): "
                           "it takes no more")
    if next_block > task.deadline:
        raise TaskRejected(f"task {task.task_id}'s join window closed at block {task.deadline}")
    if is_sink:
        raise TaskRejected("the board's forfeit sink cannot take part in a task")
    if balance < task.deposit:
        raise InsufficientFunds(f"join task {task.task_id}: insufficient funds: the deposit is "
                                f"{task.deposit} wei, the account holds {balance}")
    needed = task.deposit + WORKER_GAS * fee_per_gas
    if balance < needed:
        raise InsufficientFunds(
            f"join task {task.task_id}: insufficient funds: the deposit {task.deposit} wei plus "
            f"the gas of join, commit, reveal and claim ({WORKER_GAS} at {fee_per_gas} wei) is "
            f"{needed} wei, the account holds {balance}")


def check_release_coin(task: TaskInfo, next_block: int, account: str) -> None:
    if not any(task.coin_hash):
        raise TaskRejected(f"task {task.task_id} takes its coin from the chain; "
                           "there is nothing to release")
    if account != task.requester:
        raise TaskRejected(f"only task {task.task_id}'s requester {task.requester} can release "
                           "its coin")
    if task.phase.ended:
        raise _ended(task)
    if task.phase == Phase.JOINING:
        raise TaskRejected(f"task {task.task_id}'s roster is {task.joined}/{task.workers}: "
                           "release the coin once it is full (the join window ends at block "
                           f"{task.deadline})")
    if task.phase != Phase.AWAITING_COIN:
        raise TaskRejected(f"task {task.task_id}'s coin is already fixed")
    if next_block > task.deadline:
        raise TaskRejected(f"task {task.task_id}'s coin window closed at block {task.deadline}: "
                           "the coin can no longer be released")


def check_commit(task: TaskInfo, next_block: int, status: WorkerStatus,
                 min_blocks: int = 1) -> None:
    """commit (and `work` before it trains, with `min_blocks` = MIN_BLOCKS_TO_WORK)."""
    if task.phase.ended:
        raise _ended(task)
    if status == WorkerStatus.NONE:
        raise TaskRejected(f"this account is not a worker of task {task.task_id}")
    if task.phase in (Phase.JOINING, Phase.AWAITING_COIN):
        raise _awaiting_coin(task, next_block)
    if status != WorkerStatus.JOINED:
        raise TaskRejected(f"this account has already committed to task {task.task_id}")
    if task.phase != Phase.COMMIT or next_block > task.deadline:
        closed = task.deadline if task.phase == Phase.COMMIT else "its end"
        raise TaskRejected(f"task {task.task_id}'s commit window closed at block {closed}")
    left = task.deadline - next_block + 1
    if left < min_blocks:
        raise TaskRejected(f"only {left} block(s) left in task {task.task_id}'s commit window "
                           f"(it closes at block {task.deadline}): too few to work and commit")


def check_reveal(task: TaskInfo, next_block: int, status: WorkerStatus) -> None:
    if task.phase.ended:
        raise _ended(task)
    if status == WorkerStatus.NONE:
        raise TaskRejected(f"this account is not a worker of task {task.task_id}")
    if status == WorkerStatus.JOINED:
        raise TaskRejected(f"this account has not committed to task {task.task_id}: "
                           "nothing to reveal")
    if status != WorkerStatus.COMMITTED:
        raise TaskRejected(f"this account has already revealed for task {task.task_id}")
    if task.phase == Phase.COMMIT:
        if next_block <= task.deadline:
            raise TaskRejected(
                f"task {task.task_id}'s reveal opens when all {task.workers} workers have "
                f"committed ({task.committed} so far) or at block {task.deadline + 1}: wait, "
                "then reveal")
        return  # the commit window has closed by the block this reveal lands in
    if task.phase == Phase.SETTLEABLE or next_block > task.deadline:
        raise TaskRejected(f"task {task.task_id}'s reveal window closed at block {task.deadline}")


def check_settle(task: TaskInfo, next_block: int) -> None:
    if task.phase.ended:
        raise TaskRejected(f"task {task.task_id} is already settled: {task.phase.label}")
    if task.phase in (Phase.JOINING, Phase.AWAITING_COIN):
        raise TaskRejected(f"task {task.task_id} has not started work ({task.phase.label}); "
                           "there is nothing to settle")
    if task.phase == Phase.COMMIT and next_block <= task.deadline:
        raise TaskRejected(f"task {task.task_id}'s commit window is open until block "
                           f"{task.deadline}: settle once every reveal is in")
    if task.phase == Phase.REVEAL and next_block <= task.deadline:
        raise TaskRejected(
            f"task {task.task_id} awaits reveals ({task.revealed} of {task.committed}): settle "
            f"once all are in or after block {task.deadline}")


def check_claim(task: TaskInfo, owed: int) -> None:
    if not task.phase.ended:
        raise TaskRejected(f"task {task.task_id} has not ended ({task.phase.label}): claim "
                           "after it is settled")
    if owed == 0:
        raise TaskRejected(f"task {task.task_id} owes this account nothing "
                           "(already claimed, or nothing due)")


def check_announce(task: TaskInfo, status: WorkerStatus, uri: str) -> None:
    """announce: an agreed or disagreed task, a worker that revealed a valid result and has
    not claimed, a URI that fits."""
    if task.phase not in (Phase.AGREED, Phase.DISAGREED):
        raise TaskRejected(f"task {task.task_id} is {task.phase.label}: only an agreed task's "
                           "result, or a disagreed task's transcripts, are announced")
    if status != WorkerStatus.REVEALED:
        raise TaskRejected(f"only a worker that revealed a valid result on task "
                           f"{task.task_id} and has not claimed yet can announce")
    if not uri:
        raise TaskRejected("announce: the URI is empty")
    if len(uri.encode()) > MAX_SPEC_URI:
        raise TaskRejected(f"the result URI is {len(uri.encode())} bytes, the board takes at "
                           f"most {MAX_SPEC_URI}: {uri[:60]}…")


def check_abort(task: TaskInfo, next_block: int, account: str) -> None:
    if task.phase.ended:
        raise _ended(task)
    if task.phase == Phase.JOINING:
        if account != task.requester and next_block <= task.deadline:
            raise TaskRejected(f"task {task.task_id}'s join window is open until block "
                               f"{task.deadline}: until then only its requester may abort it")
        return
    if task.phase == Phase.AWAITING_COIN:
        if next_block <= task.deadline:
            raise TaskRejected(f"task {task.task_id} awaits the requester's coin until block "
                               f"{task.deadline}: it can be aborted after that")
        return
    raise TaskRejected(f"task {task.task_id} cannot be aborted: work began ({task.phase.label})")
