"""Rich tables for `status`, `list`, `order status` and the demo (what a person reads, built
from the board's and the market's views), and the same facts as records for `--format`."""

from __future__ import annotations

from rich.table import Table

from .board import Board, Phase, TaskInfo, WorkerStatus, hex32
from .purchase import Market, Stage


def short(value: bytes | str, keep: int = 10) -> str:
    text = hex32(value) if isinstance(value, bytes) else value
    return text if len(text) <= 2 * keep else f"{text[:keep]}…{text[-4:]}"


def wei(amount: int) -> str:
    """Exact, in ether: amounts stay integer wei everywhere but on screen."""
    from decimal import Decimal

    return f"{(Decimal(amount) / 10**18).normalize():f} ETH"


def _deadline(task: TaskInfo, head: int) -> str:
    if not task.deadline:
        return "—"
    left = task.deadline - head
    return f"block {task.deadline} ({left} left)" if left >= 0 else f"block {task.deadline} (passed)"


def task_table(board: Board, task_id: int) -> Table:
    """Terms, phase, deadline, roster with each worker's status and reveal, outcome, payouts."""
    task = board.task(task_id)
    head = board.head
    terms = Table(title=f"task {task_id} on {board.address} (block {head})", show_header=False)
    terms.add_column(style="bold")
    terms.add_column()
    rows = [
        ("phase", task.phase.label),
        ("deadline", _deadline(task, head)),
        ("requester", task.requester),
        ("reward", wei(task.reward)),
        ("deposit", wei(task.deposit)),
        ("workers", f"{task.joined} joined / {task.workers} (committed {task.committed}, "
                    f"revealed {task.revealed}, valid {task.valid})"),
        ("windows", f"join {task.join_blocks}, commit {task.commit_blocks}, "
                    f"reveal {task.reveal_blocks} blocks"),
        ("spec", hex32(task.spec)),
        ("data", hex32(task.data)),
        ("coin", "requester's (committed)" if any(task.coin_hash) else "from the chain"),
    ]
    if task.phase == Phase.AGREED:
        rows.append(("result", hex32(board.result(task_id))))
    for row in rows:
        terms.add_row(*row)

    reveals = board.reveals(task_id)
    claims = board.claims(task_id)
    roster = Table(title="roster")
    for column in ("worker", "status", "revealed", "owed", "claimed"):
        roster.add_column(column)
    workers = board.roster(task_id)
    for worker in workers:
        result, trivial = reveals.get(worker, (None, False))
        shown = "—" if result is None else short(result) + (" (trivial)" if trivial else "")
        status = board.worker_status(task_id, worker)
        label = "paid out" if status == WorkerStatus.NONE and worker in claims else status.label
        roster.add_row(worker, label, shown,
                       wei(board.owed(task_id, worker)), wei(claims.get(worker, 0)))
    roster.add_row(f"{task.requester} (requester)", "", "", wei(board.owed(task_id, task.requester)),
                   wei(claims.get(task.requester, 0)) if task.requester not in workers else "")

    outer = Table.grid(padding=(1, 0))
    outer.add_row(terms)
    outer.add_row(roster)
    return outer


def board_table(board: Board) -> Table:
    head = board.head
    table = Table(title=f"tasks on {board.address} (block {head})")
    for column in ("task", "phase", "workers", "reward", "deposit", "deadline", "requester"):
        table.add_column(column)
    for task_id in range(1, board.task_count() + 1):
        task = board.task(task_id)
        table.add_row(str(task_id), task.phase.label, f"{task.joined}/{task.workers}",
                      wei(task.reward), wei(task.deposit), _deadline(task, head), task.requester)
    return table


# ------------------------------------------------------------- for scripts (--format json|yaml)
#
# The tables' facts as plain data: amounts in integer wei, digests as 0x-hex, phases and
# statuses by their labels, the block they were read at.


def task_record(board: Board, task_id: int) -> dict:
    task = board.task(task_id)
    reveals = board.reveals(task_id)
    claims = board.claims(task_id)
    roster = []
    for worker in board.roster(task_id):
        result, trivial = reveals.get(worker, (None, False))
        status = board.worker_status(task_id, worker)
        roster.append({
            "worker": worker,
            "status": "paid out" if status == WorkerStatus.NONE and worker in claims
            else status.label,
            "revealed": None if result is None else hex32(result),
            "trivial": trivial,
            "owed": board.owed(task_id, worker),
            "claimed": claims.get(worker, 0),
        })
    return {
        "board": board.address,
        "block": board.head,
        **_task_terms(task),
        "committed": task.committed,
        "revealed": task.revealed,
        "valid": task.valid,
        "windows": {"join": task.join_blocks, "commit": task.commit_blocks,
                    "reveal": task.reveal_blocks},
        "spec": hex32(task.spec),
        "data": hex32(task.data),
        "coin": "requester" if any(task.coin_hash) else "chain",
        "result": hex32(board.result(task_id)) if task.phase == Phase.AGREED else None,
        "roster": roster,
        "requester_owed": board.owed(task_id, task.requester),
        "requester_claimed": claims.get(task.requester, 0),
    }


def board_records(board: Board) -> dict:
    return {"board": board.address, "block": board.head,
            "tasks": [_task_terms(board.task(task_id))
                      for task_id in range(1, board.task_count() + 1)]}


def _task_terms(task: TaskInfo) -> dict:
    return {"task": task.task_id, "phase": task.phase.label, "deadline": task.deadline or None,
            "requester": task.requester, "reward": task.reward, "deposit": task.deposit,
            "workers": task.workers, "joined": task.joined}


# What a job says of its run (JobResult.summary): the worker's word, never checked on chain.
WORKERS_WORD = "the worker's word: only the result digest is agreed on chain"


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_line(summary: dict | None) -> str:
    """One line: the loss from first to last epoch and the final metrics, e.g.
    "loss 2.302 → 0.3512 over 10 epochs, test_accuracy 0.9467"."""
    if not summary:
        return ""
    parts = []
    losses = [epoch["loss"] for epoch in summary.get("epochs", []) if "loss" in epoch]
    if losses:
        parts.append(f"loss {_figure(losses[0])} → {_figure(losses[-1])} over "
                     f"{len(losses)} epoch{'s' if len(losses) != 1 else ''}")
    parts += [f"{name} {_figure(value)}" for name, value in summary.get("metrics", {}).items()]
    return ", ".join(parts)


def run_lines(summary: dict | None) -> list[str]:
    """Each epoch's metrics, then the final ones, then whose word they are."""
    if not summary:
        return []
    lines = [f"epoch {i}: " + ", ".join(f"{name} {_figure(value)}" for name, value in
                                        epoch.items())
             for i, epoch in enumerate(summary.get("epochs", []), 1) if epoch]
    lines += [f"{name}: {_figure(value)}" for name, value in summary.get("metrics", {}).items()]
    return [*lines, f"({WORKERS_WORD})"] if lines else []


def order_table(market: Market, order_id: int) -> Table:
    """What `ape crowdml order status` prints: stage, terms, the step's deadline, evaluation."""
    order = market.order(order_id)
    head = market.board.head
    table = Table(title=f"order {order_id} on {market.address} (block {head})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    deadline = {Stage.OPEN: order.offer_deadline,
                Stage.OFFERED: order.step_start + order.release_blocks}.get(order.stage)
    if order.stage == Stage.EVALUATING and order.agreed_at:
        deadline = order.agreed_at + order.finalize_blocks
    rows = [
        ("stage", order.stage.label),
        ("deadline", f"block {deadline}" if deadline else "—"),
        ("buyer", order.buyer),
        ("price", wei(order.price)),
        ("bar", f"{order.threshold / 100:g} % of {order.samples} samples"),
        ("test data", hex32(order.test_data)),
        ("evaluation", f"{order.workers} workers, reward {wei(order.reward)}, deposit "
                       f"{wei(order.deposit)}, round {order.rounds} of {order.max_rounds}"),
        ("escrow", wei(order.escrow)),
        ("offer bond", wei(order.offer_bond)),
    ]
    if order.stage >= Stage.OFFERED and order.seller != "0x" + "0" * 40:
        rows += [("seller", order.seller), ("model", hex32(order.model)),
                 ("spec", hex32(order.spec))]
    if order.task_id:
        rows.append(("task", f"{order.task_id} ({market.board.phase(order.task_id).label})"))
        rows.append(("model served", "this round" if order.served
                     else "in an earlier round" if order.exposed else "not yet"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def order_record(market: Market, order_id: int) -> dict:
    """`order_table`'s facts for a script (`order status --format json|yaml`)."""
    order = market.order(order_id)
    record = {"market": market.address, "block": market.board.head, "order": order_id,
              "stage": order.stage.label, "buyer": order.buyer, "price": order.price,
              "threshold_bps": order.threshold, "samples": order.samples,
              "test_data": hex32(order.test_data),
              "evaluation": {"workers": order.workers, "reward": order.reward,
                             "deposit": order.deposit, "round": order.rounds,
                             "max_rounds": order.max_rounds, "filled": order.filled},
              "escrow": order.escrow, "offer_bond": order.offer_bond, "bond": order.bond,
              "seller": None, "model": None, "spec": None, "task": None,
              "model_served": order.served, "model_exposed": order.exposed}
    if order.stage >= Stage.OFFERED and int(order.seller, 16):
        record.update(seller=order.seller, model=hex32(order.model), spec=hex32(order.spec))
    if order.task_id:
        record["task"] = {"id": order.task_id,
                          "phase": market.board.phase(order.task_id).label}
    return record
