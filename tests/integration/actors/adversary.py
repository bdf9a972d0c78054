"""A worker that deviates, in a process of its own, through the Python API (the product's CLI
has no cheat options). It joins the first open task on the board, then plays STRATEGY:

  noshow   joins, then never commits (leaves)
  junk     commits and reveals a result of its own making
  trivial  commits and reveals a result in E_ck (the task's spec digest), which the product's
           Worker refuses to commit, so it calls the board directly
  copycat  commits another worker's commitment, then tries to open it with that worker's
           revealed result and salt (read from the reveal transaction): the board refuses
  late     computes honestly and commits, then tries to reveal only after the reveal window
  crash    computes honestly and commits, then waits to be SIGKILLed (an agent restarted on its
           state folder finishes the task)

Every strategy but crash then waits for the task to end and claims whatever it is owed.
"""

import argparse
import secrets
import sys
import time

from ape import accounts, networks, chain
from eth_utils import keccak

from ape_crowdml.board import Phase, WorkerStatus, commitment
from ape_crowdml.config import crowdml_config
from ape_crowdml.errors import CrowdmlError
from ape_crowdml.parties import Worker, find_board


def say(message: str) -> None:
    print(message, flush=True)


def wait(condition, poll: float = 0.5, board=None, task: int | None = None):
    """Poll until `condition()` is truthy; with a task, give up (exit 1) if it ends first."""
    while not (value := condition()):
        if task is not None and board.phase(task).ended:
            say(f"task {task} ended ({board.phase(task).label}) before this worker could act")
            sys.exit(1)
        time.sleep(poll)
    return value


def open_task(board) -> int:
    """The first task still taking workers."""
    def find():
        return next((t for t in range(1, board.task_count() + 1)
                     if board.phase(t) == Phase.JOINING), None)
    return wait(find)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy", choices=["noshow", "junk", "trivial", "copycat", "late",
                                             "crash"])
    parser.add_argument("--account", type=int, required=True)
    parser.add_argument("--board", required=True)
    args = parser.parse_args()

    with networks.parse_network_choice("ethereum:local:foundry"):
        account = accounts.test_accounts[args.account]
        worker = Worker(find_board(args.board), account, config=crowdml_config())
        board = worker.board
        say(f"{args.strategy} {account.address} watching board {board.address}")
        task = open_task(board)
        worker.join(task)
        say(f"task {task}: joined")
        if args.strategy == "noshow":
            return
        wait(lambda: board.phase(task) >= Phase.COMMIT, board=board, task=task)
        PLAYS[args.strategy](worker, task)
        phase = wait(lambda: (p := board.phase(task)).ended and p)
        owed = worker.owed(task)
        if owed:
            say(f"task {task}: claimed {worker.claim(task)} wei ({phase.label})")
        else:
            say(f"task {task}: nothing owed ({phase.label})")


def junk(worker: Worker, task: int) -> None:
    result = keccak(b"junk of " + bytes.fromhex(worker.account.address[2:]))
    worker.commit_result(task, result, b"junk")
    say(f"task {task}: committed junk 0x{result.hex()}")
    wait(lambda: worker.board.phase(task) >= Phase.REVEAL, board=worker.board, task=task)
    worker.reveal(task)
    say(f"task {task}: revealed junk")


def trivial(worker: Worker, task: int) -> None:
    board, me = worker.board, worker.account
    result, salt = board.task(task).spec, secrets.token_bytes(32)
    board.commit(me, task, commitment(result, salt, me.address, task))
    say(f"task {task}: committed the spec digest, an E_ck result")
    wait(lambda: board.phase(task) >= Phase.REVEAL, board=board, task=task)
    board.reveal(me, task, result, salt)
    say(f"task {task}: revealed the spec digest")


def copycat(worker: Worker, task: int) -> None:
    board, me = worker.board, worker.account

    def victim_commitment():
        for other in board.roster(task):
            if other != me.address and (copied := board.commitment_of(task, other)):
                return other, copied
        return None

    victim, copied = wait(victim_commitment, board=board, task=task)
    board.commit(me, task, copied)
    say(f"task {task}: committed {victim}'s commitment 0x{copied.hex()}")
    reveal = wait(lambda: next(iter(board.contract.Revealed.range(
        board.start_block, board.head + 1, search_topics={"task_id": task, "worker": victim})),
        None), board=board, task=task)
    call = chain.provider.web3.eth.get_transaction(reveal.transaction_hash)
    _, arguments = board.contract.decode_input(call["input"])
    try:
        board.contract.reveal(task, arguments["result"], arguments["salt"], sender=me)
        how = "its transaction reverted"
    except Exception as exc:  # noqa: BLE001 - ape's revert error, whatever its class
        how = str(exc).splitlines()[0]
    # Judged by the chain, not by whether ape raised: only the board's state says who revealed.
    if board.worker_status(task, me.address) == WorkerStatus.REVEALED:
        say(f"task {task}: the copied opening was ACCEPTED")
        sys.exit(1)
    say(f"task {task}: the board refused the copied opening: {how}")


def late(worker: Worker, task: int) -> None:
    board = worker.board
    digest = worker.work(task)
    say(f"task {task}: committed to 0x{digest.hex()}; not revealing in time")
    wait(lambda: board.phase(task) > Phase.REVEAL)
    try:
        worker.reveal(task)
    except CrowdmlError as exc:
        say(f"task {task}: late reveal refused: {exc}")
        return
    say(f"task {task}: the late reveal was ACCEPTED")
    sys.exit(1)


def crash(worker: Worker, task: int) -> None:
    digest = worker.work(task)
    say(f"task {task}: committed to 0x{digest.hex()}; waiting to be killed")
    while True:
        time.sleep(60)


PLAYS = {"junk": junk, "trivial": trivial, "copycat": copycat, "late": late, "crash": crash}

if __name__ == "__main__":
    main()
