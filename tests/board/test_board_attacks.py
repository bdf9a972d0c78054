"""Attacks from the adversarial review, played on chain against the board (the plugin's side is in
test_attacks_plugin.py): a coin the requester could compute at publish where prevrandao is a
constant (C), a roster filled in the publish block (C), block numbers past the packed field (E),
empty digests (E). Attack D, the early last committer, is in test_board_rules.py."""

import ape
import pytest
from eth_abi import encode
from eth_utils import keccak

from board_support import DATA, DEPOSIT, REWARD, SPEC, WINDOW, publish, salt_for
from vyper_source import actor, board_variant

ZERO = b"\x00" * 32
AGREED, FAILED, ABORTED = 6, 8, 9
COIN, COIN_SALT = keccak(b"requester coin"), keccak(b"requester coin salt")
COIN_HASH = keccak(encode(["bytes32", "bytes32"], [COIN, COIN_SALT]))

# Several rollups return a fixed PREVRANDAO: the variant boards below see this constant instead.
CONSTANT_PREVRANDAO = keccak(b"a chain whose prevrandao is constant")
CONSTANT_RULE = ("block.prevrandao", f'keccak256("a chain whose prevrandao is constant")')
# The rules before the fix: a chain coin from prevrandao, the task id and the filling block; a
# requester coin mixed with prevrandao and the task id.
OLD_RULES = [
    ("keccak256(abi_encode(blockhash(block.number - 1), block.prevrandao, task_id))",
     "keccak256(abi_encode(block.prevrandao, task_id, block.number))"),
    ("keccak256(abi_encode(coin, self._coin[task_id]))",
     "keccak256(abi_encode(coin, block.prevrandao, task_id))"),
]


def true_result(coin: bytes) -> bytes:
    """Stands in for the job: a deterministic function of the coin."""
    return keccak(b"trained with " + coin)


def coins_knowable_at_publish(chain, task_id: int, requester_coin: bytes | None) -> list[bytes]:
    """Every coin a requester that read the board's source can compute when it signs publish:
    the chain's head and its hash, the task id, the constant prevrandao, its own coin."""
    head = chain.blocks.head
    guesses = []
    # The roster fills a few blocks after publish (publish lands in head + 1).
    for fill in range(head.number + 2, head.number + 9):
        chain_coin = keccak(encode(["bytes32", "uint256", "uint256"], [CONSTANT_PREVRANDAO, task_id, fill]))
        guesses.append(chain_coin)
    # Its best guess at the hash of the block before the filling join is the newest it knows.
    seed = keccak(encode(["bytes32", "bytes32", "uint256"], [head.hash, CONSTANT_PREVRANDAO, task_id]))
    guesses.append(seed)
    if requester_coin is not None:
        guesses.append(keccak(encode(["bytes32", "bytes32", "uint256"], [requester_coin, CONSTANT_PREVRANDAO, task_id])))
        guesses.append(keccak(encode(["bytes32", "bytes32"], [requester_coin, seed])))
    return guesses


@pytest.mark.parametrize("requester_coin", [False, True], ids=["chain coin", "requester coin"])
@pytest.mark.parametrize("rules,outcome", [([], AGREED), (OLD_RULES, FAILED)], ids=["fixed", "old rules"])
def test_requester_cannot_compute_the_coin_at_publish_where_prevrandao_is_constant(
        requester, workers, sink, chain, requester_coin, rules, outcome):
    """Attack C: the requester lists the true result of every coin it can compute at publish in
    E_ck. Against the old rules that makes every honest worker forfeit (the control); against
    the board, the coin depends on a block hash that did not exist yet, and the task agrees."""
    board = board_variant(*rules, CONSTANT_RULE).deploy(sink, sender=requester)
    crew = workers[:2]
    task_id = board.task_count() + 1
    guesses = coins_knowable_at_publish(chain, task_id, COIN if requester_coin else None)
    assert task_id == publish(board, requester, coin_hash=COIN_HASH if requester_coin else ZERO,
                              trivial=[true_result(g) for g in guesses])
    for w in crew:
        board.join(task_id, value=DEPOSIT, sender=w)
    if requester_coin:
        board.release_coin(task_id, COIN, COIN_SALT, sender=requester)
    result = true_result(board.coin_of(task_id))  # honest workers run the job with the coin
    for w in crew:
        board.commit(task_id, board.commitment_of(result, salt_for(w), w, task_id), sender=w)
    for w in crew:
        board.reveal(task_id, result, salt_for(w), sender=w)
    board.settle(task_id, sender=requester)
    assert board.phase(task_id) == outcome
    assert board.is_trivial(task_id, result) == (outcome == FAILED)


def test_a_roster_cannot_fill_in_the_publish_block(board, requester):
    """A roster filled in the publish block would hash only blocks the requester saw."""
    first, second = actor().deploy(sender=requester), actor().deploy(sender=requester)
    task_id = board.task_count() + 1
    publish_call = (board.address, board.publish.encode_input(
        SPEC, DATA, 2, DEPOSIT, WINDOW, WINDOW, WINDOW, ZERO, []), REWARD)
    join_call = (board.address, board.join.encode_input(task_id), DEPOSIT)
    second_joins = (second.address, second.run.encode_input([join_call]), DEPOSIT)
    with ape.reverts("roster cannot fill in the publish block"):
        first.run([publish_call, join_call, second_joins], value=REWARD + 2 * DEPOSIT, sender=requester)
    assert board.balance == 0

    first.run([publish_call, join_call], value=REWARD + DEPOSIT, sender=requester)
    second.run([join_call], value=DEPOSIT, sender=requester)  # the next block
    assert board.phase(task_id) == 3 and board.task(task_id).joined == 2


def test_no_phase_starts_past_the_packed_block_field(requester, workers, sink, chain):
    """Attack E: a phase's start block is packed into 40 bits. The board refuses a block past
    MAX_BLOCK rather than wrap; here a variant lowers MAX_BLOCK to a few blocks ahead."""
    limit = chain.blocks.head.number + 4
    board = board_variant(("MAX_BLOCK: constant(uint256) = 2**40 - 1",
                           f"MAX_BLOCK: constant(uint256) = {limit}")).deploy(sink, sender=requester)
    task_id = publish(board, requester)  # limit - 2
    board.join(task_id, value=DEPOSIT, sender=workers[0])  # limit - 1
    chain.mine(1)
    with ape.reverts("block number too large"):
        board.join(task_id, value=DEPOSIT, sender=workers[1])
    with ape.reverts("block number too large"):
        publish(board, requester)
    # Nothing is stuck: the requester aborts the short roster and everyone is refunded.
    board.abort(task_id, sender=requester)
    assert board.owed(task_id, workers[0]) == DEPOSIT and board.owed(task_id, requester) == REWARD
    board.claim(task_id, sender=workers[0])
    board.claim(task_id, sender=requester)
    assert board.balance == 0


@pytest.mark.parametrize("spec,data", [(ZERO, DATA), (SPEC, ZERO)], ids=["spec", "data"])
def test_publish_refuses_an_empty_digest(board, requester, spec, data):
    which = "spec" if spec == ZERO else "data"
    with ape.reverts(f"{which} digest is empty"):
        publish(board, requester, spec=spec, data=data)


def test_publish_refuses_a_deposit_past_the_packed_field(board, requester):
    with ape.reverts("deposit too large"):
        publish(board, requester, deposit=2**80)
