"""The board's and the market's history, read once (ape_crowdml/logs.py): logs deep enough are
kept and only newer blocks asked for again, and a revert (or a reorg) below them drops them."""

from ape_crowdml.logs import REORG_DEPTH, KeptLogs
from board_support import publish


FIRST, SECOND = b"\x01" * 32, b"\x02" * 32


def published(logs: KeptLogs, task_id: int) -> list[list[bytes]]:
    """Each Published log of the task, as its E_ck list."""
    return [[bytes(d) for d in log.trivial] for log in logs.read("Published", task_id=task_id)]


def test_deep_logs_are_kept_and_newer_blocks_read_again(board, requester, chain):
    logs = KeptLogs(board, 0)
    task_id = publish(board, requester, trivial=[FIRST])
    chain.mine(REORG_DEPTH + 2)
    assert published(logs, task_id) == [[FIRST]]
    kept_at = logs._kept[("Published", (("task_id", task_id),))][0]
    assert kept_at == chain.blocks.head.number - REORG_DEPTH
    chain.mine(3)
    assert published(logs, task_id) == [[FIRST]]  # the kept log is not read twice


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
