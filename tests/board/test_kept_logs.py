"""The board's and the market's history, read once (ape_crowdml/logs.py): logs deep enough are
kept and only newer blocks asked for again, and a revert (or a reorg) below them drops them."""

from ape_crowdml.logs import REORG_DEPTH, KeptLogs
from board_support import publish


FIRST, SECOND = b"\x01" * 32, b"\x02" * 32


class Recording:
    """The contract, with the first block of each log query it is asked recorded."""

    def __init__(self, contract):
        self.contract, self.starts = contract, []

    def __getattr__(self, name):
        event, starts = getattr(self.contract, name), self.starts

        class Event:
            def range(self, start, stop, **kwargs):
                starts.append(start)
                return event.range(start, stop, **kwargs)

        return Event()


def published(logs: KeptLogs, task_id: int) -> list[list[bytes]]:
    """Each Published log of the task, as its E_ck list."""
    return [[bytes(d) for d in log.trivial] for log in logs.read("Published", task_id=task_id)]


def test_deep_logs_are_kept_and_newer_blocks_read_again(board, requester, chain):
    contract = Recording(board)
    logs = KeptLogs(contract, 0)
    task_id = publish(board, requester, trivial=[FIRST])
    chain.mine(REORG_DEPTH + 2)
    assert published(logs, task_id) == [[FIRST]]
    kept_at = chain.blocks.head.number - REORG_DEPTH
    chain.mine(3)
    assert published(logs, task_id) == [[FIRST]]  # the kept log, and no query that finds it
    assert contract.starts == [0, kept_at + 1]


def test_a_revert_below_the_kept_logs_drops_them(board, requester, chain):
    logs = KeptLogs(board, 0)
    snapshot = chain.snapshot()
    task_id = publish(board, requester, trivial=[FIRST])
    chain.mine(REORG_DEPTH + 2)
    assert published(logs, task_id) == [[FIRST]]
    chain.restore(snapshot)
    # Another history reuses the task id and outgrows the old head: the kept block's hash
    # differs, so nothing of the old history is returned.
    assert publish(board, requester, trivial=[SECOND]) == task_id
    chain.mine(REORG_DEPTH + 5)
    assert published(logs, task_id) == [[SECOND]]
