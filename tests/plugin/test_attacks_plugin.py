"""Attacks A and B from the adversarial review, played through the Python API and the board.

A: a requester holding a seat commits junk, waits for the honest workers' work, then sabotages
the task to get its reward back. It must get nothing from which the result can be rebuilt.
B: a forfeit sink the requester controls would turn that sabotage into profit. Default workers
refuse such a board before any deposit, and on a neutral board every sabotage costs its seat.
"""

from pathlib import Path

import pytest
from eth_utils import keccak

from ape_crowdml.agent import Agent
from ape_crowdml.artifacts import ArtifactStore
from ape_crowdml.delivery import unpack
from ape_crowdml.board import NEUTRAL_SINK, Phase
from ape_crowdml.errors import ArtifactMissing, PolicyRefused, TaskRejected
from ape_crowdml.parties import Requester, Worker, deploy_board
from ape_crowdml.render import wei
from board_support import (DEPOSIT as d, HIDE, JUNK, REWARD as BOARD_REWARD, SKIP, TRIVIAL, TRUE,
                      mine_past_deadline, publish, result_for, salt_for)
from crowdml_support import DEPOSIT, REWARD, config, tiny_spec_file  # noqa: F401 - fixture


@pytest.fixture
def api_board(accounts, config):
    return deploy_board(accounts[0], config=config)


def stored_digests(url: str) -> set[str]:
    """Every digest a store holds: what anyone, the requester included, can fetch from it."""
    folder = Path(url)
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.mark.parametrize("sabotage", ["junk", "silence"])
def test_requester_holding_a_seat_gets_no_result_without_paying(api_board, accounts, config, tmp_path,
                                                                chain, sabotage):
    """Attack A through the API: n = 3, the requester's own seat commits junk without working.
    Before settlement no store holds the honest result; after DISAGREED (junk revealed) or
    FAILED (nothing revealed) none ever does, while the honest workers settle and claim."""
    board = api_board
    spec = tiny_spec_file(tmp_path)
    requester = Requester(board, accounts[0], config=config)
    seat = Worker(board, accounts[0], config=config)  # the requester's own seat
    honest = [Worker(board, accounts[i], config=config) for i in (1, 2)]
    task = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=3)
    spec_digest = "0x" + board.task(task).spec.hex()
    for w in (*honest, seat):
        w.join(task)
    requester.release_coin(task)
    seat.commit_result(task, keccak(b"junk"), b"junk artifact")
    result = {w.work(task) for w in honest}.pop()
    for w in honest:
        w.reveal(task)
    if sabotage == "junk":
        seat.reveal(task)
    else:
        chain.mine(board.task(task).deadline - chain.blocks.head.number)

    # Before settlement: the honest result is on chain as a digest only, in no store.
    assert stored_digests(config.artifact_url()) == {spec_digest}
    with pytest.raises(ArtifactMissing):
        ArtifactStore(config.artifact_url()).get(result)
    with pytest.raises(TaskRejected, match="only a task that settled agreed has a result"):
        requester.fetch(task)

    outcome = honest[0].settle(task)
    assert outcome == (Phase.DISAGREED if sabotage == "junk" else Phase.FAILED)
    lines = []
    Agent(honest[1], mine_when_idle=False, log=lines.append).step()  # claims, never the result
    assert honest[0].claim(task) == DEPOSIT // 2
    assert board.claims(task)[accounts[2].address] == DEPOSIT // 2
    assert not any("result delivered" in line for line in lines)
    # Of a disagreed task the honest workers deliver their runs' summaries, never the result;
    # of a failed one, nothing.
    uploads = stored_digests(config.artifact_url()) - {spec_digest}
    delivered = [unpack((Path(config.artifact_url()) / name).read_bytes(), name)
                 for name in uploads]
    assert {d.artifact for d in delivered} <= {b""}
    assert all(d.summary["digest"] == "0x" + result.hex() for d in delivered)
    assert bool(delivered) == (sabotage == "junk") == honest[0].deliver(task)
    with pytest.raises(TaskRejected, match=f"task {task} ended {outcome.label}: only a task that "
                                           "settled agreed has a result"):
        requester.fetch(task)


def test_the_result_is_published_when_the_task_agrees_before_claiming(api_board, accounts, config,
                                                                     tmp_path):
    """The requester that paid gets the result even if the workers go offline once they see
    AGREED: the agent publishes before it claims."""
    board = api_board
    requester = Requester(board, accounts[0], config=config)
    workers = [Worker(board, accounts[i], config=config) for i in (1, 2)]
    task = requester.publish(tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
                             requester_coin=False)
    for w in workers:
        w.join(task)
    result = {w.work(task) for w in workers}.pop()
    for w in workers:
        w.reveal(task)
    assert requester.settle(task) == Phase.AGREED
    with pytest.raises(ArtifactMissing, match="no worker has announced the result yet"):
        requester.fetch(task)

    lines = []
    agent = Agent(workers[0], mine_when_idle=False, log=lines.append)
    agent.step()
    assert lines == [f"task {task}: result delivered (its URI is on the board)",
                     f"task {task}: claimed {wei(DEPOSIT + REWARD // 2)} (agreed)"]
    assert [worker for worker, _ in board.announcements(task)] == [accounts[1].address]
    assert requester.fetch(task)["params"]["Dense_0"]["kernel"].shape == (64, 16)


# ---------------------------------------------------------------- B: the forfeit sink


def test_a_default_worker_refuses_a_board_whose_sink_is_not_neutral(accounts, config, tmp_path):
    requester_sink = accounts[8].address  # an account the requester holds
    board = deploy_board(accounts[0], requester_sink, config=config)
    assert board.sink == requester_sink
    task = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2)
    before = accounts[1].balance
    with pytest.raises(PolicyRefused, match=f"sends forfeits to {requester_sink}, which is not "
                                            "among this worker's accepted sinks"):
        Worker(board, accounts[1], config=config).join(task)
    assert accounts[1].balance == before and board.task(task).joined == 0

    trusting = config.model_copy(update={"worker": config.worker.model_copy(
        update={"accept_sinks": [NEUTRAL_SINK, requester_sink]})})
    Worker(board, accounts[1], config=trusting).join(task)
    assert board.task(task).joined == 1


def test_a_default_worker_refuses_long_windows_before_any_deposit(api_board, accounts, config,
                                                                  tmp_path):
    limit = config.worker.max_window_blocks
    task = Requester(api_board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
        reveal_blocks=limit + 1)
    before = accounts[1].balance
    with pytest.raises(PolicyRefused, match=f"reveal window is {limit + 1} blocks, above this "
                                            f"worker's maximum {limit}"):
        Worker(api_board, accounts[1], config=config).join(task)
    assert accounts[1].balance == before


def test_a_default_worker_refuses_a_window_too_short_to_act_in(api_board, accounts, config,
                                                               tmp_path):
    """A 1-block commit window would make an honest worker forfeit its whole deposit."""
    task = Requester(api_board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2, commit_blocks=1)
    before = accounts[1].balance
    with pytest.raises(PolicyRefused, match="commit window is 1 blocks, below this worker's "
                                            f"minimum {config.worker.min_window_blocks}"):
        Worker(api_board, accounts[1], config=config).join(task)
    assert accounts[1].balance == before


@pytest.fixture
def neutral_board(project, requester):
    return project.TaskBoard.deploy(NEUTRAL_SINK, sender=requester)


SABOTAGE = [JUNK, SKIP, HIDE, TRIVIAL]


@pytest.mark.parametrize("seats", [1, 2])
@pytest.mark.parametrize("strategy", SABOTAGE)
def test_no_party_gains_from_sabotage_on_a_neutral_board(neutral_board, requester, workers, chain,
                                                         seats, strategy):
    """n = 3: the requester sabotages from its own seat and, with seats = 2, from one it bribed;
    the others are honest. Every sabotaging seat loses at least d/2 (the requester only gets its
    reward back), each honest worker loses d/2, and the forfeits are burned."""
    board = neutral_board
    saboteurs = [requester, workers[0]][:seats]
    honest = workers[1:4 - seats]
    seated = saboteurs + honest
    plan = {w.address: strategy if w in saboteurs else TRUE for w in seated}
    task_id = publish(board, requester, workers=3)
    for w in seated:
        board.join(task_id, value=d, sender=w)
    for w in seated:
        if plan[w.address] != SKIP:
            result = result_for(plan[w.address], w)
            board.commit(task_id, board.commitment_of(result, salt_for(w), w, task_id), sender=w)
    if board.phase(task_id) == Phase.COMMIT:
        mine_past_deadline(chain, board, task_id)
    for w in seated:
        if plan[w.address] not in (SKIP, HIDE):
            board.reveal(task_id, result_for(plan[w.address], w), salt_for(w), sender=w)
    if board.phase(task_id) == Phase.REVEAL:
        mine_past_deadline(chain, board, task_id)
    board.settle(task_id, sender=workers[3])
    assert board.phase(task_id) in (Phase.DISAGREED, Phase.FAILED)

    stake = {w.address: d + (BOARD_REWARD if w == requester else 0) for w in seated}
    net = {w.address: board.owed(task_id, w) - stake[w.address] for w in seated}
    for w in saboteurs:
        assert net[w.address] <= -(d // 2)
    for w in honest:
        assert net[w.address] == -(d // 2)
    assert board.forfeited() == -sum(net.values())

    burned_before = board.provider.get_balance(NEUTRAL_SINK)
    board.sweep(sender=workers[3])
    assert board.provider.get_balance(NEUTRAL_SINK) - burned_before == -sum(net.values())
    for w in seated:
        if board.owed(task_id, w):
            board.claim(task_id, sender=w)
    assert board.balance == 0


def test_a_store_that_refuses_the_artifact_does_not_hold_the_workers_money(
        api_board, accounts, config, tmp_path, monkeypatch):
    """If the worker's result store refuses the upload (down, read-only, no credentials), the
    worker still claims; the board then no longer counts it as a worker of the task, so a
    co-worker's delivery is the requester's way to the result."""
    board = api_board
    requester = Requester(board, accounts[0], config=config)
    workers = [Worker(board, accounts[i], config=config) for i in (1, 2)]
    task = requester.publish(tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2)
    for w in workers:
        w.join(task)
    requester.release_coin(task)
    result = {w.work(task) for w in workers}.pop()
    for w in workers:
        w.reveal(task)
    assert requester.settle(task) == Phase.AGREED

    def refuse(self, data):
        raise PermissionError("the store is read-only")

    with monkeypatch.context() as patch:
        patch.setattr(ArtifactStore, "put", refuse)
        assert workers[0].claim(task) == DEPOSIT + REWARD // 2
        with pytest.raises(TaskRejected):  # paid once: nothing owed any more
            workers[0].claim(task)
    with pytest.raises(ArtifactMissing, match="no worker has announced the result yet"):
        requester.fetch_bytes(task)
    assert not workers[0].deliver(task)  # the store is back, but this worker was paid out
    with pytest.raises(TaskRejected, match="not claimed yet can announce"):  # nor may it
        workers[0].board.announce(workers[0].account, task, "https://results.example/x")
    assert workers[1].claim(task) == DEPOSIT + REWARD // 2  # delivers first
    assert workers[0].deliver(task)  # a co-worker's URI serves the same bytes
    assert len(board.announcements(task)) == 1
    assert keccak(requester.fetch_bytes(task)) == result
