"""The board suites' vocabulary: amounts, digests, the paper's worker strategies, and helpers
that publish a task and check the board's books. Imported by tests/conftest.py and the board
suites (by name, not through `conftest`: tests/integration and tests/fork have conftests too)."""

from dataclasses import dataclass, field
from pathlib import Path

from eth_utils import keccak

ROOT = Path(__file__).resolve().parents[1]
DEPOSIT = 2 * 10**16
REWARD = 12 * 10**15  # divisible by 2, 3 and 4: the tables' reward/n is exact
WINDOW = 10

SPEC = keccak(b"spec: train_classifier")
DATA = keccak(b"data: digits.npz")
TRUE_RESULT = keccak(b"the true result")

# Worker strategies, named after the paper's: SKIP joins but never commits,
# HIDE commits but never opens, TRIVIAL opens a result in E_ck, TRUE opens the
# true result, JUNK opens junk unique to the worker, and AGREED_JUNK opens the
# junk a coalition agreed on beforehand.
SKIP, HIDE, TRIVIAL, TRUE, JUNK, AGREED_JUNK = "skip", "hide", "trivial", "true", "junk", "agreed-junk"


def salt_for(worker) -> bytes:
    return keccak(b"salt" + bytes.fromhex(worker.address[2:]))


def result_for(strategy: str, worker) -> bytes:
    if strategy == TRIVIAL:
        return SPEC
    if strategy == JUNK:
        return keccak(b"junk of " + bytes.fromhex(worker.address[2:]))
    if strategy == AGREED_JUNK:
        return keccak(b"pre-agreed junk")
    return TRUE_RESULT


def publish(board, requester, workers=2, reward=REWARD, deposit=DEPOSIT, window=WINDOW,
            coin_hash=b"\x00" * 32, trivial=(), spec=SPEC, data=DATA):
    """Publish a task; returns its id, read from the Published event."""
    receipt = board.publish(
        spec, data, workers, deposit, window, window, window, coin_hash, list(trivial),
        value=reward, sender=requester,
    )
    return receipt.decode_logs(board.Published)[0].task_id


def mine_past_deadline(chain, board, task_id):
    """Mine so that the next transaction lands just after the task's current deadline."""
    chain.mine(max(board.deadline(task_id) - chain.blocks.head.number, 0))


def assert_solvent(board, task_id, parties):
    """The board holds exactly what it still owes: unclaimed shares plus forfeits."""
    owed = sum(board.owed(task_id, p) for p in set(parties))
    assert board.balance == owed + board.forfeited()


@dataclass
class Played:
    task_id: int
    outcome: int
    payoff: dict = field(default_factory=dict)  # address -> wei gained (negative: lost)
