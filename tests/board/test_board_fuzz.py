"""Stateful fuzzing of the board: random interleavings of every call by random parties, with the
money invariants checked after every step.

Parties: two requesters that also join tasks, four workers, and a contract (tests/contracts/
Actor.vy) that publishes, joins and claims, and re-enters `claim` or `sweep` whenever it receives
ether. The sink is the burn address or, in some runs, a contract that refuses ether.

After every step: the board holds exactly what was paid in minus what was paid out and swept;
its unswept forfeits are the tasks' forfeits minus what was swept; no re-entrant call succeeded.
Every claim pays exactly the paper's share for the outcome (a model below), and a second claim
pays nothing. At the end every task is driven to an outcome, every party claims, and the board
holds only unswept forfeits. A seeded run reaches AGREED in a fair share of examples.

The default run takes about a minute; CROWDML_FUZZ_EXAMPLES=200 CROWDML_FUZZ_STEPS=100 runs longer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ape.exceptions import ContractLogicError
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from ape_crowdml.board import NEUTRAL_SINK, Phase
from vyper_source import actor

EXAMPLES = int(os.environ.get("CROWDML_FUZZ_EXAMPLES", "5"))
STEPS = int(os.environ.get("CROWDML_FUZZ_STEPS", "35"))
ZERO = b"\x00" * 32
SPEC, DATA = keccak(b"fuzz spec"), keccak(b"fuzz data")
TRUE, JUNK, TRIVIAL, SKIP, HIDE = "true", "junk", "trivial", "skip", "hide"
# Most seats play honestly, so that tasks agree often enough to test the AGREED payoffs.
PLANS = st.sampled_from([TRUE] * 16 + [JUNK, TRIVIAL, SKIP, HIDE])
MODE_ACCEPT, MODE_REFUSE, MODE_REENTER = 0, 1, 2


@dataclass
class Seat:
    plan: str
    salt: bytes
    result: bytes | None = None  # committed result
    revealed: bool = False
    trivial: bool = False


@dataclass
class Task:
    task_id: int
    requester: str
    reward: int
    deposit: int
    workers: int
    coin: bytes | None  # the requester's coin, None for a chain coin
    seats: dict[str, Seat] = field(default_factory=dict)
    paid_in: int = 0
    paid_out: dict[str, int] = field(default_factory=dict)
    forfeit: int = 0
    outcome: Phase | None = None

    def expected_share(self, account: str) -> int:
        """The paper's payoff table: what `claim` owes `account` in total for this outcome."""
        d, r, n, outcome = self.deposit, self.reward, self.workers, self.outcome
        share = 0
        seat = self.seats.get(account)
        if seat is not None:
            if outcome in (Phase.AGREED, Phase.COIN_WITHHELD):
                share += d + r // n
            elif outcome == Phase.DISAGREED:
                share += d // 2
            elif outcome == Phase.ABORTED:
                share += d
            elif seat.revealed and not seat.trivial:
                share += d // 2
        if account == self.requester:
            share += r - n * (r // n) if outcome in (Phase.AGREED, Phase.COIN_WITHHELD) else r
        return share


class BoardMachine(RuleBasedStateMachine):
    """One board per example; see the module docstring for what is checked."""

    ctx: dict = {}  # accounts, chain, project and the shared actor, set by the test
    agreed_runs: list[bool] = []

    def __init__(self):
        super().__init__()
        ctx = self.ctx
        self.chain, self.accounts = ctx["chain"], ctx["accounts"]
        self.reentrant = ctx["reentrant"]
        self.operator = self.accounts[0]  # sends the actor's transactions
        self.requesters = [self.accounts[0].address, self.accounts[1].address, self.reentrant.address]
        self.workers = [self.accounts[i].address for i in (1, 2, 3, 4, 5)] + [self.reentrant.address]
        self.signers = {a.address: a for a in self.accounts[:7]}
        self.board = None
        self.tasks: dict[int, Task] = {}
        self.swept = 0
        self.agreed = False

    # ------------------------------------------------------------ sending

    def send(self, sender: str, method: str, *args, value: int = 0):
        """Call board.`method` from `sender` (an account or the actor); the receipt, or None if
        the board reverted."""
        try:
            if sender == self.reentrant.address:
                data = getattr(self.board, method).encode_input(*args)
                return self.reentrant.run([(self.board.address, data, value)], value=value,
                                          sender=self.operator)
            return getattr(self.board, method)(*args, value=value, sender=self.signers[sender])
        except ContractLogicError:
            return None

    def head(self) -> int:
        return self.chain.blocks.height

    # ------------------------------------------------------------ rules

    TERMS = dict(requester=st.integers(0, 2), workers=st.integers(2, 3), reward=st.integers(1, 10**6),
                 half_deposit=st.integers(1, 10**6), window=st.integers(6, 16),
                 requester_coin=st.booleans())

    @initialize(refusing_sink=st.booleans(), **TERMS)
    def deploy(self, refusing_sink, **terms):
        """Each example starts on a fresh board, with a first task."""
        sink = self.ctx["refuser"].address if refusing_sink else NEUTRAL_SINK
        self.board = self.ctx["project"].TaskBoard.deploy(sink, sender=self.operator)
        self.publish(**terms)

    def has_tasks(self) -> bool:
        return bool(self.tasks)

    @precondition(lambda self: len(self.tasks) < 4)
    @rule(**TERMS)
    def publish(self, requester, workers, reward, half_deposit, window, requester_coin):
        sender = self.requesters[requester]
        coin = keccak(b"coin %d" % len(self.tasks)) if requester_coin else None
        coin_hash = keccak(coin + ZERO) if coin else ZERO
        receipt = self.send(sender, "publish", SPEC, DATA, workers, 2 * half_deposit, window,
                            window, window, coin_hash, [keccak(b"listed junk")], value=reward)
        assert receipt is not None, "valid terms must publish"
        task_id = receipt.decode_logs(self.board.Published)[0].task_id
        self.tasks[task_id] = Task(task_id, sender, reward, 2 * half_deposit, workers, coin,
                                   paid_in=reward)

    def some_task(self, data) -> Task:
        return self.tasks[data.draw(st.sampled_from(sorted(self.tasks)))]

    # Each action may be refused by the board (wrong phase, window closed, not a worker, ...):
    # a refusal changes nothing, which the invariants check.

    def join_as(self, task: Task, sender: str, plan: str) -> None:
        if self.send(sender, "join", task.task_id, value=task.deposit):
            task.seats[sender] = Seat(plan, keccak(b"salt" + sender.encode()))
            task.paid_in += task.deposit

    def commit_as(self, task: Task, address: str) -> None:
        seat = task.seats[address]
        if self.board.phase(task.task_id) != Phase.COMMIT:
            return  # the coin is not fixed or the window closed: nothing to commit to
        result = self.result_for(task, address, seat.plan)
        commitment = self.board.commitment_of(result, seat.salt, address, task.task_id)
        if self.send(address, "commit", task.task_id, commitment):
            seat.result = result

    def reveal_as(self, task: Task, address: str) -> None:
        seat = task.seats[address]
        receipt = self.send(address, "reveal", task.task_id, seat.result, seat.salt)
        if receipt:
            seat.revealed = True
            seat.trivial = receipt.decode_logs(self.board.Revealed)[0].trivial

    def settle_as(self, task: Task, caller: str) -> None:
        receipt = self.send(caller, "settle", task.task_id)
        if receipt and (logs := receipt.decode_logs(self.board.Settled)):  # none: already ended
            self.ended(task, Phase(logs[0].outcome), logs[0].forfeited)

    def abort_as(self, task: Task, caller: str) -> None:
        receipt = self.send(caller, "abort", task.task_id)
        if receipt and (logs := receipt.decode_logs(self.board.Aborted)):  # none: already ended
            self.ended(task, Phase(logs[0].outcome), 0)

    def result_for(self, task: Task, address: str, plan: str) -> bytes:
        if plan == TRIVIAL:
            return SPEC
        if plan == JUNK:
            return keccak(b"junk" + address.encode())
        return keccak(b"trained with " + bytes(self.board.coin_of(task.task_id)))

    def to_commit(self, task: Task) -> list[str]:
        return [a for a, s in task.seats.items() if s.result is None and s.plan != SKIP]

    def to_reveal(self, task: Task) -> list[str]:
        return [a for a, s in task.seats.items() if s.result and not s.revealed and s.plan != HIDE]

    # The actions `act` draws from, by weight: mostly the next honest step of every task, so
    # that tasks run to their end (and agree) rather than only time out.
    ACTIONS = ["advance"] * 20 + ["join", "release_coin", "commit", "reveal", "settle", "abort",
                                 "claim", "sweep", "mine"]

    @precondition(has_tasks)
    @rule(data=st.data(), action=st.sampled_from(ACTIONS))
    def act(self, data, action):
        getattr(self, f"random_{action}")(data)

    def random_join(self, data):
        self.join_as(self.some_task(data), data.draw(st.sampled_from(self.workers)), data.draw(PLANS))

    def random_release_coin(self, data):
        task = self.some_task(data)
        sender = data.draw(st.sampled_from([task.requester, self.workers[0]]))
        if task.coin is not None:
            self.send(sender, "release_coin", task.task_id, task.coin, ZERO)

    def random_commit(self, data):
        task = self.some_task(data)
        if self.to_commit(task):
            self.commit_as(task, data.draw(st.sampled_from(self.to_commit(task))))

    def random_reveal(self, data):
        task = self.some_task(data)
        if self.to_reveal(task):
            self.reveal_as(task, data.draw(st.sampled_from(self.to_reveal(task))))

    def random_settle(self, data):
        self.settle_as(self.some_task(data), data.draw(st.sampled_from(self.workers)))

    def random_abort(self, data):
        task = self.some_task(data)
        self.abort_as(task, data.draw(st.sampled_from([task.requester, *self.workers])))

    def random_claim(self, data):
        task = self.some_task(data)
        parties = sorted({task.requester, *task.seats, self.accounts[6].address})
        self.claim_as(task, data.draw(st.sampled_from(parties)))

    def random_sweep(self, data):
        amount = self.board.forfeited()
        if self.send(data.draw(st.sampled_from(self.workers)), "sweep"):
            self.swept += amount

    def random_mine(self, data):
        self.chain.mine(data.draw(st.integers(1, 4)))

    def random_advance(self, data):
        for task in self.tasks.values():
            phase = Phase(self.board.phase(task.task_id))
            if phase in (Phase.JOINING, Phase.AWAITING_COIN) and self.head() >= self.board.deadline(task.task_id):
                self.abort_as(task, self.workers[0])  # the window closed (the agent does this)
            elif phase == Phase.JOINING:
                free = [w for w in self.workers if w not in task.seats]
                self.join_as(task, data.draw(st.sampled_from(free)), data.draw(PLANS))
            elif phase == Phase.AWAITING_COIN and task.coin is not None:
                self.send(task.requester, "release_coin", task.task_id, task.coin, ZERO)
            elif phase == Phase.COMMIT and self.to_commit(task):
                self.commit_as(task, self.to_commit(task)[0])
            elif phase == Phase.REVEAL and self.to_reveal(task):
                self.reveal_as(task, self.to_reveal(task)[0])
            elif phase == Phase.SETTLEABLE:
                self.settle_as(task, self.workers[0])
            elif phase.ended:
                due = [p for p in sorted({task.requester, *task.seats})
                       if task.expected_share(p) > task.paid_out.get(p, 0)]
                if due:
                    self.claim_as(task, due[0])

    def ended(self, task: Task, outcome: Phase, forfeit: int) -> None:
        task.outcome, task.forfeit = outcome, forfeit
        self.agreed |= outcome == Phase.AGREED
        valid = [s for s in task.seats.values() if s.revealed and not s.trivial]
        if outcome not in (Phase.ABORTED, Phase.COIN_WITHHELD):
            # The outcome follows from the reveals, as the paper says.
            if len(valid) < task.workers:
                assert outcome == Phase.FAILED
            else:
                agreed = len({s.result for s in valid}) == 1
                assert outcome == (Phase.AGREED if agreed else Phase.DISAGREED)
        owed = sum(task.expected_share(a) for a in {task.requester, *task.seats})
        assert task.paid_in == owed + forfeit, "paid in = owed + forfeited"

    def claim_as(self, task: Task, claimer: str) -> None:
        due = 0 if task.outcome is None else task.expected_share(claimer) - task.paid_out.get(claimer, 0)
        if claimer == self.reentrant.address:  # re-enter claim or sweep when paid
            target = self.board.claim.encode_input(task.task_id) if task.task_id % 2 else \
                self.board.sweep.encode_input()
            self.reentrant.set_mode(MODE_REENTER, self.board.address, target, sender=self.operator)
        receipt = self.send(claimer, "claim", task.task_id)
        if due == 0:
            assert receipt is None, "a claim with nothing due must revert"
            return
        assert receipt is not None, "a claim with something due must pay"
        assert receipt.decode_logs(self.board.Claimed)[0].amount == due
        task.paid_out[claimer] = task.paid_out.get(claimer, 0) + due
        assert self.board.owed(task.task_id, claimer) == 0

    # ------------------------------------------------------------ invariants

    @invariant()
    def board_holds_what_it_owes(self):
        paid_in = sum(t.paid_in for t in self.tasks.values())
        paid_out = sum(sum(t.paid_out.values()) for t in self.tasks.values())
        assert self.board.balance == paid_in - paid_out - self.swept
        assert self.board.forfeited() == sum(t.forfeit for t in self.tasks.values()) - self.swept

    @invariant()
    def no_reentrant_call_succeeded(self):
        assert self.reentrant.reentered() == 0

    def teardown(self):
        """Every task reaches an end from which every party can claim its share."""
        if self.board is None:
            return
        for task in self.tasks.values():
            for _ in range(8):  # at most JOINING, AWAITING_COIN, COMMIT, REVEAL, SETTLEABLE
                if task.outcome is not None:
                    break
                phase = Phase(self.board.phase(task.task_id))
                if phase == Phase.SETTLEABLE:
                    self.settle_as(task, self.workers[0])
                    continue
                # Let the window close, for views too.
                self.chain.mine(max(self.board.deadline(task.task_id) - self.head(), 0) + 1)
                if phase in (Phase.JOINING, Phase.AWAITING_COIN):
                    self.abort_as(task, self.workers[0])
            assert task.outcome is not None, f"task {task.task_id} cannot reach an end"
            for party in {task.requester, *task.seats}:
                self.claim_as(task, party)
                assert self.board.owed(task.task_id, party) == 0
        self.board_holds_what_it_owes()
        assert self.board.balance == self.board.forfeited()
        self.agreed_runs.append(self.agreed)


def test_board_under_random_interleavings(accounts, chain, project):
    reentrant = actor().deploy(sender=accounts[0])
    refuser = actor().deploy(sender=accounts[0])
    refuser.set_mode(MODE_REFUSE, refuser.address, b"", sender=accounts[0])
    BoardMachine.ctx = dict(accounts=accounts, chain=chain, project=project,
                            reentrant=reentrant, refuser=refuser)
    BoardMachine.agreed_runs = []
    run_state_machine_as_test(BoardMachine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None,
        deadline=None, suppress_health_check=list(HealthCheck)))
    runs = BoardMachine.agreed_runs
    assert sum(runs) >= len(runs) / 4, f"AGREED in only {sum(runs)} of {len(runs)} runs"
