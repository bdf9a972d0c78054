"""Tasks started on a chain are finished on a fork of it, as a user tests against mainnet
before sending anything there: the board comes from the upstream's config entry, the
upstream's commitments open on the fork from the secrets the parties kept, the payouts are
exact, and the upstream never sees a transaction. The upstream is tests/fork/conftest.py's."""

import pytest
from web3 import Web3

from ape_crowdml.board import Phase, WorkerStatus
from ape_crowdml.config import crowdml_config
from ape_crowdml.errors import BoardNotConfigured, TaskRejected
from ape_crowdml.parties import Requester, Worker, find_board
from crowdml_support import DEPOSIT, REWARD
from upstream_chain import ODD_REWARD, upstream_facts


@pytest.fixture
def parties(upstream, accounts):
    """The board the config names, and its requester and workers (alice, bob, carol)."""
    board = find_board()
    return board, Requester(board, accounts[0]), [Worker(board, accounts[i]) for i in (1, 2, 3)]


def test_the_fork_is_mainnets_and_holds_the_upstream_board(upstream, networks, chain):
    assert networks.provider.network.name == "mainnet-fork"
    assert chain.chain_id == 1
    # The fork starts from the upstream's head.
    number, block_hash = upstream.head
    assert chain.blocks[number].hash == block_hash
    assert find_board().address == upstream.board


def test_a_fork_without_its_upstreams_board_says_where_to_name_it(upstream):
    unnamed = crowdml_config().model_copy(update={"boards": {}})
    with pytest.raises(BoardNotConfigured, match="set `crowdml: boards: ethereum: mainnet:`"):
        find_board(config=unnamed)


def test_tasks_in_flight_upstream_are_finished_on_the_fork(upstream, parties, chain):
    board, requester, (alice, bob, carol) = parties
    half_joined, half_committed = upstream.half_joined, upstream.half_committed
    # What the upstream left: one seat taken; a full roster with alice committed.
    assert (board.phase(half_joined), board.task(half_joined).joined) == (Phase.JOINING, 1)
    assert board.phase(half_committed) == Phase.COMMIT
    assert board.worker_status(half_committed, alice.account.address) == WorkerStatus.COMMITTED
    assert board.worker_status(half_committed, bob.account.address) == WorkerStatus.JOINED
    assert board.contract.balance == ODD_REWARD + REWARD + 3 * DEPOSIT
    with pytest.raises(TaskRejected, match="full"):  # the upstream's roster holds on the fork
        carol.join(half_committed)

    bob.join(half_joined)
    requester.release_coin(half_joined)
    digests = {alice.work(half_joined), bob.work(half_joined)}
    assert len(digests) == 1
    # Alice's commitment was made upstream; her salt stayed on her machine.
    assert bob.work(half_committed) == alice.store.result(
        chain.chain_id, board.address, half_committed, alice.account.address).result
    for task in (half_joined, half_committed):
        alice.reveal(task)
        bob.reveal(task)
        assert requester.settle(task) == Phase.AGREED

    for task, reward in ((half_joined, ODD_REWARD), (half_committed, REWARD)):
        for worker in (alice, bob):
            assert claimed(worker, task, chain) == DEPOSIT + reward // 2
        dust = reward - 2 * (reward // 2)
        assert requester.owed(task) == dust
        if dust:
            assert claimed(requester, task, chain) == dust == 1
        assert requester.fetch(task)["params"]["Dense_0"]["kernel"].shape == (64, 16)
    assert board.contract.balance == 0 and board.contract.forfeited() == 0


def claimed(party, task_id, chain) -> int:
    """Claim, and check the account gained exactly what the board says it paid."""
    if hasattr(party, "try_deliver"):
        party.try_deliver(task_id)  # what a worker's claim does first: its own transaction
    before = party.account.balance
    paid = party.claim(task_id)
    receipt = chain.provider.get_receipt(chain.blocks.head.transactions[0].txn_hash)
    assert party.account.balance - before + receipt.total_fees_paid == paid
    return paid


def test_the_upstream_is_untouched(upstream):
    """Runs last: nothing the fork did reached the upstream."""
    assert Web3(Web3.HTTPProvider(upstream.uri)).eth.chain_id == 1
    assert upstream_facts(upstream.uri, upstream.board) == {
        "head": upstream.head, "balances": upstream.balances, "nonces": upstream.nonces}
