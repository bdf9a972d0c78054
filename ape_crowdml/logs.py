"""A contract's event logs, read once: what the board and the market read of their history.

A mined block's logs do not change, so the logs of blocks at least REORG_DEPTH behind the head
are kept per query (event and topics) and only the blocks after them asked for again. A log
query over a contract's whole life took half a second on ape's test chain, and one task reads
its Published event a dozen times. A kept block whose hash changed (a reorg, a test's revert)
drops what was kept.
"""

from __future__ import annotations

# Blocks behind the head whose logs are kept: deeper than any reorg expected.
REORG_DEPTH = 12


class KeptLogs:
    def __init__(self, contract, start_block: int):
        self.contract = contract
        self.start_block = start_block
        # (event, topics) -> (last kept block, its hash, the logs up to it)
        self._kept: dict[tuple, tuple[int, bytes, list]] = {}

    def read(self, event: str, **topics) -> list:
        """`event`'s logs matching `topics`, from the contract's start to the head."""
        from ape import chain

        head = chain.blocks.head.number
        key = (event, tuple(sorted(topics.items())))
        kept = self._kept.get(key)
        if kept is not None and (kept[0] > head or chain.blocks[kept[0]].hash != kept[1]):
            kept = None
        start = kept[0] + 1 if kept else self.start_block
        old = kept[2] if kept else []
        fresh = list(getattr(self.contract, event).range(start, head + 1, search_topics=topics))
        deep = head - REORG_DEPTH
        if deep >= start:
            self._kept[key] = (deep, chain.blocks[deep].hash,
                               old + [log for log in fresh if log.block_number <= deep])
        return old + fresh
