"""A call the board would refuse is never sent: for every state-changing command, the refusal
names the reason, the caller's nonce is unchanged and no block is mined. A call carrying a
secret (reveal, release-coin) is not even simulated until the local checks say it is due."""

import pytest

from ape_crowdml import preflight
from ape_crowdml.board import Board, Phase, TaskInfo, WorkerStatus
from ape_crowdml.errors import CrowdmlError, InsufficientFunds, TaskRejected
from ape_crowdml.parties import Requester, Worker, deploy_board
from crowdml_support import DEPOSIT, REWARD, isolated_config, tiny_spec_file

# Its behaviour depends on the node: `make test-anvil` runs it on anvil too.
pytestmark = pytest.mark.anvil

RESULT, SALT = b"\x11" * 32, b"\x22" * 32


@pytest.fixture
def config(tmp_path, accounts):
    # The board's sink is a test account, so that the sink's own refusal can be shown; these
    # workers accept it (by default a worker accepts only the burn address).
    config = isolated_config(tmp_path)
    policy = config.worker.model_copy(update={"accept_sinks": [accounts[9].address]})
    return config.model_copy(update={"worker": policy})


@pytest.fixture
def board(accounts, config):
    return deploy_board(accounts[0], accounts[9].address, config=config)


@pytest.fixture
def spec(tmp_path):
    return tiny_spec_file(tmp_path)


@pytest.fixture
def requester(board, accounts, config):
    return Requester(board, accounts[0], config=config)


@pytest.fixture
def workers(board, accounts, config):
    return [Worker(board, accounts[i], config=config) for i in (1, 2)]


@pytest.fixture
def simulated(monkeypatch):
    """Every simulated call, as (method, args): what reached a node before a send."""
    import ape_crowdml.board

    calls = []
    original = ape_crowdml.board.simulate

    def recording(contract, action, method, args, sender, value=0, refuser="the board"):
        calls.append((method, args))
        return original(contract, action, method, args, sender, value, refuser)

    monkeypatch.setattr(ape_crowdml.board, "simulate", recording)
    return calls


@pytest.fixture
def refused(chain):
    """Run a call that must be refused; check nothing was sent nor mined."""

    def check(account, call, match, error=TaskRejected):
        nonce, head, balance = account.nonce, chain.blocks.head.number, account.balance
        with pytest.raises(error, match=match):
            call()
        assert (account.nonce, chain.blocks.head.number, account.balance) == (nonce, head, balance)

    return check


def publish(requester, spec, **terms):
    return requester.publish(spec, **{"reward": REWARD, "deposit": DEPOSIT, "workers": 2, **terms})


def test_deploy_refusals(accounts, refused):
    deployer = accounts[0]
    refused(deployer, lambda: Board.deploy(deployer, deployer.address),
            "every publish from it would fail")
    refused(deployer, lambda: Board.deploy(deployer, "0x" + "00" * 20), "zero address")


def test_publish_refusals(requester, spec, refused):
    me = requester.account
    refused(me, lambda: publish(requester, spec, deposit=DEPOSIT + 1), "must be positive and even")
    refused(me, lambda: publish(requester, spec, workers=1), "at least 2 workers, not 1")
    refused(me, lambda: publish(requester, spec, commit_blocks=0), "--commit-blocks must be")
    refused(me, lambda: publish(requester, spec, reward=me.balance + 1), "insufficient funds",
            InsufficientFunds)
    # A limit only the board knows: the simulated call brings its reason.
    refused(me, lambda: publish(requester, spec, deposit=2**129), "deposit too large")


def test_join_refusals(requester, workers, board, spec, accounts, refused, chain):
    task = publish(requester, spec, join_blocks=5)
    first, second = workers
    first.join(task)
    refused(first.account, lambda: first.join(task), "already joined")
    sink = Worker(board, accounts[9], config=first.config)
    refused(sink.account, lambda: sink.join(task), "sink cannot take part")
    chain.mine(5)
    refused(second.account, lambda: second.join(task), f"join window closed at block")
    full = publish(requester, spec)
    for w in workers:
        w.join(full)
    third = Worker(board, accounts[3], config=first.config)
    refused(third.account, lambda: third.join(full), "roster is full")


def test_release_coin_refusals(requester, workers, board, spec, accounts, refused, simulated):
    task = publish(requester, spec)
    refused(requester.account, lambda: requester.release_coin(task),
            r"roster is 0/2: release the coin once it is full")
    for w in workers:
        w.join(task)
    # Another account sharing the requester's state folder gets neither the call nor the secret.
    impostor = Requester(board, accounts[1], config=requester.config, store=requester.store)
    refused(impostor.account, lambda: impostor.release_coin(task), "only task 1's requester")
    # The requester on a machine without the opening.
    elsewhere = Requester(board, accounts[0], config=isolated_config(requester.config.state_folder
                                                                     / "elsewhere"))
    refused(requester.account, lambda: elsewhere.release_coin(task), "no coin opening",
            CrowdmlError)
    refused(requester.account, lambda: board.release_coin(requester.account, task, b"\x01" * 32,
                                                          b"\x02" * 32), "does not match")
    released = lambda: [args for method, args in simulated if method == "release_coin"]  # noqa: E731
    assert released() == []  # no opening, right or wrong, reached the node
    requester.release_coin(task)
    assert len(released()) == 1
    refused(requester.account, lambda: requester.release_coin(task), "already fixed")
    chain_coin = publish(requester, spec, requester_coin=False)
    refused(requester.account, lambda: requester.release_coin(chain_coin), "nothing to release")


def test_commit_and_work_refusals(requester, workers, board, spec, refused, monkeypatch, chain,
                                  accounts):
    trained = []
    monkeypatch.setattr("crowdml_compute.runner.start_job", lambda *a, **k: trained.append(a))
    first, second = workers
    task = publish(requester, spec, join_blocks=20, commit_blocks=4, reveal_blocks=3)
    first.join(task)
    refused(first.account, lambda: first.work(task), r"roster is 1/2: work starts once it fills")
    second.join(task)
    refused(first.account, lambda: first.work(task),
            r"awaits the requester's coin: wait for it until block \d+")
    outsider = Worker(board, accounts[3], config=first.config)
    refused(outsider.account, lambda: outsider.commit_result(task, RESULT, b"x"), "not a worker")
    requester.release_coin(task)
    first.commit_result(task, RESULT, b"artifact")
    refused(first.account, lambda: first.commit_result(task, RESULT, b"x"), "already committed")
    chain.mine(2)  # the next block is the window's last: too few to train and commit
    refused(second.account, lambda: second.work(task), r"only 1 block\(s\) left")
    chain.mine(1)
    refused(second.account, lambda: second.commit_result(task, RESULT, b"x"),
            "commit window closed")
    chain.mine(3)  # the reveal window closes unused
    requester.settle(task)
    refused(second.account, lambda: second.work(task), "has ended: failed")
    assert trained == []


def test_reveal_refusals(requester, workers, board, spec, refused, simulated):
    first, second = workers
    task = publish(requester, spec)
    for w in workers:
        w.join(task)
    requester.release_coin(task)
    refused(first.account, lambda: first.reveal(task), "has not committed to task 1")
    first.commit_result(task, RESULT, b"artifact")
    simulated.clear()
    # The leak: revealing before the others committed sent the result and salt.
    refused(first.account, lambda: first.reveal(task),
            r"reveal opens when all 2 workers have committed \(1 so far\) or at block \d+")
    assert simulated == []
    second.commit_result(task, RESULT, b"artifact")
    refused(first.account, lambda: board.reveal(first.account, task, RESULT, b"\x00" * 32),
            "does not match")
    simulated.clear()
    first.reveal(task)
    assert [method for method, _ in simulated] == ["reveal"]
    refused(first.account, lambda: first.reveal(task), "already revealed")


def test_settle_claim_and_abort_refusals(requester, workers, board, spec, refused, accounts,
                                         chain):
    first, second = workers
    task = publish(requester, spec, requester_coin=False, commit_blocks=3, reveal_blocks=3)
    refused(first.account, lambda: board.abort(first.account, task),
            "only its requester may abort it")
    refused(requester.account, lambda: requester.settle(task), "has not started work")
    refused(first.account, lambda: first.claim(task), r"has not ended \(joining\)")
    for w in workers:
        w.join(task)
    refused(requester.account, lambda: requester.abort(task), "work began")
    refused(requester.account, lambda: requester.settle(task), "commit window is open until")
    for w in workers:
        w.commit_result(task, RESULT, b"artifact")
    refused(requester.account, lambda: requester.settle(task), r"awaits reveals \(0 of 2\)")
    for w in workers:
        w.reveal(task)
    assert requester.settle(task) == Phase.AGREED
    refused(requester.account, lambda: requester.settle(task), "already settled: agreed")
    first.claim(task)
    refused(first.account, lambda: first.claim(task), "owes this account nothing")
    stranger = Worker(board, accounts[4], config=first.config)
    refused(stranger.account, lambda: stranger.claim(task), "owes this account nothing")


def test_the_simulation_refuses_what_the_local_checks_let_through(requester, workers, spec,
                                                                  refused, monkeypatch):
    """Without the local checks, the simulated call alone keeps a refused join off the chain,
    on every provider."""
    task = publish(requester, spec)
    first = workers[0]
    first.join(task)
    monkeypatch.setattr(preflight, "check_join", lambda *a, **k: None)
    refused(first.account, lambda: first.board.join(first.account, task),
            "join task 1 refused by the board: already joined")


def task_info(phase: Phase, **fields) -> TaskInfo:
    base = dict(task_id=1, requester="0xA", spec=b"", data=b"", reward=REWARD, deposit=DEPOSIT,
                workers=3, join_blocks=20, commit_blocks=20, reveal_blocks=20,
                coin_hash=b"\x01" * 32, phase=phase, deadline=100, joined=3, committed=1,
                revealed=0, valid=0)
    return TaskInfo(**{**base, **fields})


@pytest.mark.parametrize("next_block, message", [
    (100, r"reveal opens when all 3 workers have committed \(1 so far\) or at block 101"),
    (101, None),  # the commit window closed: the reveal is due in the block a send lands in
])
def test_reveal_is_due_at_the_first_block_after_the_commit_window(next_block, message):
    task = task_info(Phase.COMMIT)
    if message is None:
        preflight.check_reveal(task, next_block, WorkerStatus.COMMITTED)
    else:
        with pytest.raises(TaskRejected, match=message):
            preflight.check_reveal(task, next_block, WorkerStatus.COMMITTED)


def test_withheld_coin_says_to_abort():
    task = task_info(Phase.AWAITING_COIN)
    with pytest.raises(TaskRejected, match="did not release the coin by block 100: abort"):
        preflight.check_commit(task, 101, WorkerStatus.JOINED)


def test_phases_and_statuses_print_by_name():
    # An IntEnum prints as its number since Python 3.11: `alice.settle(task)` showed "6".
    assert (str(Phase.AGREED), f"{Phase.COIN_WITHHELD}", f"{WorkerStatus.COMMITTED:>10}") == \
        ("AGREED", "COIN_WITHHELD", " COMMITTED")
    assert repr(Phase.AGREED) == "<Phase.AGREED: 6>" and Phase.AGREED == 6
