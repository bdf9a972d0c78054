"""Timing, coins, aborts, bad input and attacks: every revert path with its
reason, and that no path leaves wei stuck or lets a party take more than its share."""

import ape
import pytest
from eth_abi import encode
from eth_utils import keccak

from board_support import (DATA, DEPOSIT, REWARD, SPEC, TRUE_RESULT, WINDOW, assert_solvent, mine_past_deadline,
                      publish, salt_for)

# Its behaviour depends on the node: `make test-anvil` runs it on anvil too.
pytestmark = pytest.mark.anvil

ZERO = b"\x00" * 32
COIN, COIN_SALT = keccak(b"requester coin"), keccak(b"requester coin salt")
COIN_HASH = keccak(encode(["bytes32", "bytes32"], [COIN, COIN_SALT]))
JOINING, AWAITING_COIN, COMMIT, REVEAL, SETTLEABLE = 1, 2, 3, 4, 5
AGREED, FAILED, ABORTED, COIN_WITHHELD = 6, 8, 9, 10


@pytest.fixture
def pair(workers):
    return workers[:2]


@pytest.fixture
def full_task(board, requester, pair):
    """A two-worker task with a chain coin, roster full, commit window open."""
    task_id = publish(board, requester)
    for w in pair:
        board.join(task_id, value=DEPOSIT, sender=w)
    return task_id


def commit_true(board, task_id, worker):
    return board.commit(task_id, board.commitment_of(TRUE_RESULT, salt_for(worker), worker, task_id), sender=worker)


# ---------------------------------------------------------------- publish


TERMS = dict(workers=2, deposit=DEPOSIT, join_blocks=WINDOW, commit_blocks=WINDOW, reveal_blocks=WINDOW)


@pytest.mark.parametrize(
    "change,reason",
    [
        (dict(value=0), "reward must be positive"),
        (dict(workers=1), "need at least 2 workers"),
        (dict(workers=1025), "too many workers"),
        (dict(deposit=0), "deposit must be positive"),
        (dict(deposit=DEPOSIT + 1), "deposit must be even"),
        (dict(join_blocks=0), "windows must be positive"),
        (dict(commit_blocks=0), "windows must be positive"),
        (dict(reveal_blocks=0), "windows must be positive"),
        (dict(join_blocks=2**24), "window too long"),
        (dict(commit_blocks=2**24), "window too long"),
        (dict(reveal_blocks=2**24), "window too long"),
    ],
)
def test_publish_rejects_bad_terms(board, requester, change, reason):
    terms = {**TERMS, "value": REWARD, **change}
    value = terms.pop("value")
    with ape.reverts(reason):
        board.publish(SPEC, DATA, *terms.values(), ZERO, [], value=value, sender=requester)
    assert board.balance == 0


def test_the_sink_cannot_take_part(board, requester, sink):
    with ape.reverts("the sink cannot take part"):
        publish(board, sink)
    task_id = publish(board, requester)
    with ape.reverts("the sink cannot take part"):
        board.join(task_id, value=DEPOSIT, sender=sink)


def test_publish_records_terms(board, requester):
    receipt = board.publish(SPEC, DATA, 3, DEPOSIT, WINDOW, WINDOW, WINDOW, ZERO, [keccak(b"all zeros model")],
                            value=REWARD, sender=requester)
    event = receipt.decode_logs(board.Published)[0]
    task_id = event.task_id
    assert list(event.trivial) == [keccak(b"all zeros model")]
    t = board.task(task_id)
    assert (t.requester, t.spec, t.data, t.reward, t.deposit, t.workers) == (requester.address, SPEC, DATA, REWARD, DEPOSIT, 3)
    assert t.phase == JOINING and t.joined == 0
    assert board.is_trivial(task_id, keccak(b"all zeros model"))
    assert board.is_trivial(task_id, SPEC) and board.is_trivial(task_id, DATA) and board.is_trivial(task_id, ZERO)
    assert not board.is_trivial(task_id, TRUE_RESULT)


# ---------------------------------------------------------------- join


def test_join_rules(board, requester, workers, chain):
    task_id = publish(board, requester)
    with ape.reverts("wrong deposit"):
        board.join(task_id, value=DEPOSIT - 2, sender=workers[0])
    board.join(task_id, value=DEPOSIT, sender=workers[0])
    with ape.reverts("already joined"):
        board.join(task_id, value=DEPOSIT, sender=workers[0])
    board.join(task_id, value=DEPOSIT, sender=workers[1])
    assert board.phase(task_id) == COMMIT
    with ape.reverts("not open for joining"):
        board.join(task_id, value=DEPOSIT, sender=workers[2])


def mine_to(chain, block):
    """Mine so that the next transaction lands in `block`."""
    chain.mine(block - chain.blocks.head.number - 1)


def test_windows_end_exactly_at_their_deadline(board, requester, workers, chain):
    """Each window's last block is the one `deadline()` names: a call there succeeds and
    one block later it reverts."""
    late, crew = workers[3], workers[:3]
    task_id = publish(board, requester, workers=3)
    board.join(task_id, value=DEPOSIT, sender=crew[0])
    board.join(task_id, value=DEPOSIT, sender=crew[1])
    deadline = board.deadline(task_id)
    mine_to(chain, deadline)
    filling = board.join(task_id, value=DEPOSIT, sender=crew[2])
    assert filling.block_number == deadline

    deadline = board.deadline(task_id)
    assert deadline == filling.block_number + WINDOW
    commit_true(board, task_id, crew[0])
    mine_to(chain, deadline)
    assert commit_true(board, task_id, crew[1]).block_number == deadline
    with ape.reverts("commit window closed"):
        commit_true(board, task_id, crew[2])

    deadline = board.deadline(task_id)  # the reveal window opened when the commit window closed
    assert deadline == filling.block_number + 2 * WINDOW
    mine_to(chain, deadline)
    receipt = board.reveal(task_id, TRUE_RESULT, salt_for(crew[0]), sender=crew[0])
    assert receipt.block_number == deadline
    with ape.reverts("reveal window closed"):
        board.reveal(task_id, TRUE_RESULT, salt_for(crew[1]), sender=crew[1])
    assert board.phase(task_id) == SETTLEABLE

    short = publish(board, requester)
    board.join(short, value=DEPOSIT, sender=crew[0])
    mine_to(chain, board.deadline(short) + 1)
    with ape.reverts("join window closed"):
        board.join(short, value=DEPOSIT, sender=late)


def test_an_early_last_commit_opens_reveals_but_never_shortens_them(board, requester, pair, full_task, chain):
    """Attack D: every worker commits at once. Reveals may start, but a worker that plans by
    the commit deadline it was shown still has reveal_blocks after it."""
    commit_deadline = board.deadline(full_task)
    commit_true(board, full_task, pair[0])
    last = commit_true(board, full_task, pair[1])
    assert last.block_number + WINDOW < commit_deadline + WINDOW
    assert board.phase(full_task) == REVEAL
    assert board.deadline(full_task) == commit_deadline + WINDOW
    board.reveal(full_task, TRUE_RESULT, salt_for(pair[0]), sender=pair[0])  # early is fine
    mine_to(chain, commit_deadline + WINDOW)
    assert board.reveal(full_task, TRUE_RESULT, salt_for(pair[1]), sender=pair[1]).block_number == commit_deadline + WINDOW
    board.settle(full_task, sender=requester)
    assert board.phase(full_task) == AGREED


def test_settle_comes_as_soon_as_everyone_revealed(board, requester, pair, full_task):
    for w in pair:
        commit_true(board, full_task, w)
    for w in pair:
        board.reveal(full_task, TRUE_RESULT, salt_for(w), sender=w)
    assert board.phase(full_task) == SETTLEABLE
    reveal_deadline = board.deadline(full_task)
    assert board.settle(full_task, sender=requester).block_number < reveal_deadline
    assert board.phase(full_task) == AGREED


def test_chain_coin_is_fixed_by_the_filling_join(board, requester, pair, chain):
    task_id = publish(board, requester)
    first = board.join(task_id, value=DEPOSIT, sender=pair[0])
    assert not first.decode_logs(board.CoinFixed)
    filling = board.join(task_id, value=DEPOSIT, sender=pair[1])
    fixed = filling.decode_logs(board.CoinFixed)[0]
    assert board.deadline(task_id) == filling.block_number + WINDOW
    assert board.coin_of(task_id) == fixed.coin
    # The hash of the block before the filling join's, with prevrandao and the task id. (ape's
    # test chain reports another mixHash than the prevrandao its EVM saw; anvil the same.)
    if chain.provider.name == "foundry":
        block = chain.provider.web3.eth.get_block(filling.block_number)
        previous = chain.provider.web3.eth.get_block(filling.block_number - 1)
        seed = encode(["bytes32", "bytes32", "uint256"], [previous.hash, block.mixHash, task_id])
        assert fixed.coin == keccak(seed)
    assert board.phase(task_id) == COMMIT


def test_coins_differ_between_tasks(board, requester, workers):
    coins = []
    for _ in range(2):
        task_id = publish(board, requester)
        for w in workers[:2]:
            board.join(task_id, value=DEPOSIT, sender=w)
        coins.append(board.coin_of(task_id))
    assert coins[0] != coins[1]


# ---------------------------------------------------------------- requester coin


def test_requester_coin_release(board, requester, pair):
    task_id = publish(board, requester, coin_hash=COIN_HASH)
    board.join(task_id, value=DEPOSIT, sender=pair[0])
    with ape.reverts("not awaiting the coin"):
        board.release_coin(task_id, COIN, COIN_SALT, sender=requester)
    with ape.reverts("coin not fixed"):
        board.coin_of(task_id)
    board.join(task_id, value=DEPOSIT, sender=pair[1])
    assert board.phase(task_id) == AWAITING_COIN
    with ape.reverts("coin not fixed"):
        commit_true(board, task_id, pair[0])
    with ape.reverts("only the requester"):
        board.release_coin(task_id, COIN, COIN_SALT, sender=pair[0])
    with ape.reverts("coin does not match"):
        board.release_coin(task_id, keccak(b"another coin"), COIN_SALT, sender=requester)
    receipt = board.release_coin(task_id, COIN, COIN_SALT, sender=requester)
    fixed = receipt.decode_logs(board.CoinFixed)[0]
    assert fixed.coin not in (COIN, ZERO)  # mixed with the chain's seed
    assert board.coin_of(task_id) == fixed.coin
    assert board.phase(task_id) == COMMIT


def test_requester_cannot_blacklist_the_result_of_its_own_coin(board, requester, pair):
    """The requester knows its coin at publish. Were the task's coin its coin, it could list
    the true result in E_ck, get the work, and have every honest worker forfeit."""

    def true_result(coin):  # stands in for the job: a function of the coin
        return keccak(b"trained with " + coin)

    task_id = publish(board, requester, coin_hash=COIN_HASH, trivial=[true_result(COIN)])
    for w in pair:
        board.join(task_id, value=DEPOSIT, sender=w)
    board.release_coin(task_id, COIN, COIN_SALT, sender=requester)
    result = true_result(board.coin_of(task_id))
    assert not board.is_trivial(task_id, result)
    for w in pair:
        board.commit(task_id, board.commitment_of(result, salt_for(w), w, task_id), sender=w)
    for w in pair:
        board.reveal(task_id, result, salt_for(w), sender=w)
    board.settle(task_id, sender=requester)
    assert board.phase(task_id) == AGREED


def test_withheld_coin_pays_workers_their_share(board, requester, pair, chain):
    task_id = publish(board, requester, coin_hash=COIN_HASH, reward=REWARD + 1)
    for w in pair:
        board.join(task_id, value=DEPOSIT, sender=w)
    with ape.reverts("coin window still open"):
        board.abort(task_id, sender=pair[0])
    chain.mine(WINDOW + 1)
    with ape.reverts("coin window closed"):
        board.release_coin(task_id, COIN, COIN_SALT, sender=requester)
    board.abort(task_id, sender=pair[0])
    assert board.phase(task_id) == COIN_WITHHELD
    for w in pair:
        assert board.owed(task_id, w) == DEPOSIT + (REWARD + 1) // 2
    assert board.owed(task_id, requester) == 1
    assert_solvent(board, task_id, [requester, *pair])
    for party in [requester, *pair]:
        board.claim(task_id, sender=party)
    assert board.balance == 0


# ---------------------------------------------------------------- abort


def test_requester_aborts_short_roster(board, requester, pair):
    task_id = publish(board, requester)
    board.join(task_id, value=DEPOSIT, sender=pair[0])
    with ape.reverts("join window still open"):
        board.abort(task_id, sender=pair[0])
    receipt = board.abort(task_id, sender=requester)
    assert receipt.decode_logs(board.Aborted)[0].outcome == ABORTED
    assert board.owed(task_id, pair[0]) == DEPOSIT
    assert board.owed(task_id, requester) == REWARD
    board.claim(task_id, sender=pair[0])
    board.claim(task_id, sender=requester)
    assert board.balance == 0


def test_anyone_aborts_after_join_window(board, requester, pair, chain):
    task_id = publish(board, requester)
    board.join(task_id, value=DEPOSIT, sender=pair[0])
    chain.mine(WINDOW + 1)
    board.abort(task_id, sender=pair[1])
    assert board.phase(task_id) == ABORTED
    # A racing second abort (or a settle) of the ended task does nothing, and does not fail.
    for late in (board.abort, board.settle):
        receipt = late(task_id, sender=requester)
        assert not receipt.failed and not receipt.events
    assert board.phase(task_id) == ABORTED


def test_no_abort_once_work_began(board, requester, full_task):
    with ape.reverts("cannot abort after work began"):
        board.abort(full_task, sender=requester)


# ---------------------------------------------------------------- commit and reveal


def test_commit_rules(board, requester, pair, workers, full_task, chain):
    with ape.reverts("not a worker"):
        commit_true(board, full_task, workers[5])
    with ape.reverts("reserved commitment"):
        board.commit(full_task, (2).to_bytes(32, "big"), sender=pair[0])
    commit_true(board, full_task, pair[0])
    with ape.reverts("already committed"):
        commit_true(board, full_task, pair[0])
    with ape.reverts("reveal phase not open"):
        board.reveal(full_task, TRUE_RESULT, salt_for(pair[0]), sender=pair[0])
    with ape.reverts("commit window still open"):
        board.settle(full_task, sender=requester)
    chain.mine(WINDOW)
    with ape.reverts("commit window closed"):
        commit_true(board, full_task, pair[1])
    assert board.phase(full_task) == REVEAL


def test_reveal_rules(board, requester, pair, workers, full_task, chain):
    for w in pair:
        commit_true(board, full_task, w)
    assert board.phase(full_task) == REVEAL
    with ape.reverts("not a worker"):
        board.reveal(full_task, TRUE_RESULT, salt_for(workers[5]), sender=workers[5])
    with ape.reverts("commitment mismatch"):
        board.reveal(full_task, TRUE_RESULT, keccak(b"wrong salt"), sender=pair[0])
    board.reveal(full_task, TRUE_RESULT, salt_for(pair[0]), sender=pair[0])  # a retry succeeds
    with ape.reverts("already revealed"):
        board.reveal(full_task, TRUE_RESULT, salt_for(pair[0]), sender=pair[0])
    with ape.reverts("reveals still pending"):
        board.settle(full_task, sender=requester)
    with ape.reverts("not settled"):
        board.claim(full_task, sender=pair[0])
    mine_past_deadline(chain, board, full_task)
    with ape.reverts("reveal window closed"):
        board.reveal(full_task, TRUE_RESULT, salt_for(pair[1]), sender=pair[1])
    assert board.phase(full_task) == SETTLEABLE
    board.settle(full_task, sender=workers[7])
    forfeited = board.forfeited()
    late = board.settle(full_task, sender=requester)  # a racing settle: nothing, no failure
    assert not late.failed and not late.events and board.forfeited() == forfeited
    assert board.phase(full_task) == FAILED
    with ape.reverts("no agreed result"):
        board.result_of(full_task)


@pytest.mark.parametrize("name", ["empty", "spec", "data", "listed"])
def test_every_e_ck_result_is_a_failure(board, requester, pair, chain, name):
    listed = keccak(b"all-zero weights")
    trivial = {"empty": ZERO, "spec": SPEC, "data": DATA, "listed": listed}[name]
    task_id = publish(board, requester, trivial=[listed])
    for w in pair:
        board.join(task_id, value=DEPOSIT, sender=w)
    # Both reveal it: the first reveal must be caught without a valid result to compare with.
    for w in pair:
        board.commit(task_id, board.commitment_of(trivial, salt_for(w), w, task_id), sender=w)
    for w in pair:
        receipt = board.reveal(task_id, trivial, salt_for(w), sender=w)
        assert receipt.decode_logs(board.Revealed)[0].trivial
        assert board.worker_status(task_id, w) == 4
    board.settle(task_id, sender=requester)
    assert board.phase(task_id) == FAILED
    assert board.owed(task_id, pair[0]) == board.owed(task_id, pair[1]) == 0
    assert board.owed(task_id, requester) == REWARD


def test_reveal_of_uncommitted_worker_is_refused(board, pair, full_task, chain):
    commit_true(board, full_task, pair[0])
    chain.mine(WINDOW + 1)
    with ape.reverts("nothing committed"):
        board.reveal(full_task, TRUE_RESULT, salt_for(pair[1]), sender=pair[1])


def test_copied_commitment_cannot_be_opened(board, requester, pair, full_task, chain):
    """A free-rider who copies the first commitment off the chain gains nothing."""
    honest, copier = pair
    commitment = board.commitment_of(TRUE_RESULT, salt_for(honest), honest, full_task)
    board.commit(full_task, commitment, sender=honest)
    board.commit(full_task, commitment, sender=copier)
    board.reveal(full_task, TRUE_RESULT, salt_for(honest), sender=honest)
    with ape.reverts("commitment mismatch"):
        board.reveal(full_task, TRUE_RESULT, salt_for(honest), sender=copier)
    mine_past_deadline(chain, board, full_task)
    board.settle(full_task, sender=requester)
    assert board.owed(full_task, honest) == DEPOSIT // 2
    assert board.owed(full_task, copier) == 0


def test_agreed_result_is_readable_and_claims_are_single(board, requester, pair, full_task):
    for w in pair:
        commit_true(board, full_task, w)
    for w in pair:
        board.reveal(full_task, TRUE_RESULT, salt_for(w), sender=w)
    receipt = board.settle(full_task, sender=requester)
    assert receipt.decode_logs(board.Settled)[0].result == TRUE_RESULT
    assert board.result_of(full_task) == TRUE_RESULT
    assert board.worker_status(full_task, pair[0]) == 3
    board.claim(full_task, sender=pair[0])
    assert board.worker_status(full_task, pair[0]) == 0
    with ape.reverts("nothing to claim"):
        board.claim(full_task, sender=pair[0])
    with ape.reverts("nothing to claim"):
        board.claim(full_task, sender=requester)  # reward divisible by 2: no dust owed
    with ape.reverts("nothing to sweep"):
        board.sweep(sender=requester)


def test_requester_joining_its_own_task_with_junk_gains_nothing(board, requester, workers, sink):
    """Forfeits go to the sink, so sabotaging an honest worker never pays the requester."""
    honest = workers[0]
    task_id = publish(board, requester)
    for w in (requester, honest):
        board.join(task_id, value=DEPOSIT, sender=w)
    junk = keccak(b"junk")
    board.commit(task_id, board.commitment_of(junk, salt_for(requester), requester, task_id), sender=requester)
    commit_true(board, task_id, honest)
    board.reveal(task_id, junk, salt_for(requester), sender=requester)
    board.reveal(task_id, TRUE_RESULT, salt_for(honest), sender=honest)
    board.settle(task_id, sender=honest)
    # As worker: d/2 back; as requester: the reward back. Net: the requester lost d/2.
    assert board.owed(task_id, requester) == DEPOSIT // 2 + REWARD
    board.claim(task_id, sender=requester)
    assert board.owed(task_id, requester) == 0
    assert board.forfeited() == DEPOSIT
    board.sweep(sender=honest)
    board.claim(task_id, sender=honest)
    assert board.balance == 0


def test_balance_equals_obligations_at_every_step(board, requester, workers, chain):
    """Two tasks interleaved: after every transaction the board holds exactly
    the escrow of running tasks plus what ended tasks still owe."""
    crew = workers[:3]
    tasks = [publish(board, requester, workers=3), publish(board, requester, workers=3, reward=REWARD + 7)]

    def check():
        held = board.forfeited()
        for t in tasks:
            view = board.task(t)
            if view.phase >= AGREED:
                held += sum(board.owed(t, p) for p in [requester, *crew])
            else:
                held += view.reward + view.joined * view.deposit
        assert board.balance == held

    for w in crew:
        for t in tasks:
            board.join(t, value=DEPOSIT, sender=w)
            check()
    results = {crew[0]: TRUE_RESULT, crew[1]: TRUE_RESULT, crew[2]: keccak(b"junk")}
    for t in tasks:
        for w in crew:
            board.commit(t, board.commitment_of(results[w], salt_for(w), w, t), sender=w)
            check()
    for w in crew[:2]:
        board.reveal(tasks[0], results[w], salt_for(w), sender=w)
        check()
    for w in crew:
        board.reveal(tasks[1], results[w], salt_for(w), sender=w)
        check()
    mine_past_deadline(chain, board, tasks[0])
    for t in tasks:
        board.settle(t, sender=requester)
        check()
    for t in tasks:
        for party in [requester, *crew]:
            if board.owed(t, party):
                board.claim(t, sender=party)
                check()
    board.sweep(sender=requester)
    assert board.balance == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda b, who: b.join(99, value=DEPOSIT, sender=who),
        lambda b, who: b.release_coin(99, COIN, COIN_SALT, sender=who),
        lambda b, who: b.abort(99, sender=who),
        lambda b, who: b.commit(99, TRUE_RESULT, sender=who),
        lambda b, who: b.reveal(99, TRUE_RESULT, ZERO, sender=who),
        lambda b, who: b.settle(99, sender=who),
        lambda b, who: b.claim(99, sender=who),
    ],
    ids=["join", "release_coin", "abort", "commit", "reveal", "settle", "claim"],
)
def test_unknown_task(board, requester, call):
    assert board.phase(99) == 0
    with ape.reverts("unknown task"):
        call(board, requester)
    assert board.balance == 0


def test_no_work_after_the_task_ended(board, requester, pair, full_task, chain):
    chain.mine(2 * WINDOW + 1)
    board.settle(full_task, sender=requester)
    with ape.reverts("task ended"):
        commit_true(board, full_task, pair[0])
    with ape.reverts("task ended"):
        board.reveal(full_task, TRUE_RESULT, salt_for(pair[0]), sender=pair[0])
