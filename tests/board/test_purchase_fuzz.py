"""Stateful fuzzing of the model market, as tests/board/test_board_fuzz.py does the board: random
interleavings of every ModelPurchase call (open, offer, decline, release, serve, present_key,
advance, finalize, cancel, claim, sweep) by random parties, with the board's evaluation rounds
joined, served, played and left unstaffed at random, and blocks mined in between.

After every step: the market holds exactly its orders' escrows and bonds, the declined bonds not
yet claimed and the forfeits not yet swept; each order's refund after a served model was left
unevaluated is its escrow less (price + reward) * (max_rounds - filled rounds) / max_rounds. At
the end every order is driven to an end, every party claims what it is owed, the forfeits are
swept, and the market holds nothing.

CROWDML_FUZZ_EXAMPLES / CROWDML_FUZZ_STEPS run it longer.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from ape.exceptions import ContractLogicError
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ape_crowdml.board import NEUTRAL_SINK
from crowdml_compute.digest import bits_body, encode_bits
from ape_crowdml.purchase import Stage

EXAMPLES = int(os.environ.get("CROWDML_FUZZ_EXAMPLES", "4"))
STEPS = int(os.environ.get("CROWDML_FUZZ_STEPS", "30"))
SAMPLES, WINDOW, JOIN_WINDOW = 16, 12, 40
HEAD, TAIL = b'{"hparams":{"model_digest":"0x', b'","subset_size":16}}'
COMMIT, REVEAL, AGREED, ABORTED = 3, 4, 6, 9


class MarketMachine(RuleBasedStateMachine):
    ctx: dict = {}
    ended: set = set()  # (stage, exposed) of every order the runs ended: what they reached

    def __init__(self):
        super().__init__()
        self.chain, accounts = self.ctx["chain"], self.ctx["accounts"]
        self.buyers = [accounts[0], accounts[1]]
        self.sellers = [accounts[6], accounts[7], accounts[1]]  # a buyer may sell to another
        self.crew = [accounts[2], accounts[3], accounts[4], accounts[0]]  # the buyer holds a seat
        self.parties = {a.address: a for a in self.buyers + self.sellers + self.crew}
        self.orders: list[int] = []
        self.bits: dict[int, list[int]] = {}  # task → the bitstring its roster agreed on

    def send(self, contract, method, *args, sender, value=0):
        try:
            return getattr(contract, method)(*args, value=value, sender=sender)
        except ContractLogicError as exc:
            if os.environ.get("FUZZ_DEBUG"):
                print(method, exc)
            return None

    def view(self, order_id):
        """The order's view, with its id."""
        fields = self.market.order(order_id)
        return SimpleNamespace(order_id=order_id, **{name: getattr(fields, name) for name in (
            "buyer", "seller", "stage", "price", "reward", "escrow", "workers", "deposit",
            "max_rounds", "offer_bond", "bond", "filled", "exposed", "agreed_at", "task_id")})

    def order(self, i):
        return self.view(self.orders[i % len(self.orders)])

    @initialize()
    def deploy(self):
        project = self.ctx["project"]
        self.board = project.TaskBoard.deploy(NEUTRAL_SINK, sender=self.buyers[0])
        self.market = project.ModelPurchase.deploy(self.board, sender=self.buyers[0])

    # ------------------------------------------------------------ the buyer and the seller

    @rule(buyer=st.integers(0, 1), price=st.integers(1, 10**4), rounds=st.integers(1, 4),
          workers=st.integers(2, 3), bond=st.integers(0, 10**4))
    def open(self, buyer, price, rounds, workers, bond):
        reward = workers * 10
        deposit = 2 * max(-(-(price + reward) // rounds), 1)  # max_rounds * d/2 >= price + reward
        receipt = self.send(self.market, "open_order", price, 5000, SAMPLES, keccak(b"test"), HEAD, TAIL,
                            (workers, deposit, reward, JOIN_WINDOW, WINDOW, WINDOW),
                            (self.chain.blocks.head.number + JOIN_WINDOW, JOIN_WINDOW, 10, rounds), bond,
                            sender=self.buyers[buyer], value=price + reward)
        assert receipt is not None
        self.orders.append(receipt.decode_logs(self.market.OrderOpened)[0].order_id)

    @rule(i=st.integers(0, 9), seller=st.integers(0, 2), good=st.booleans())
    def offer(self, i, seller, good):
        if self.orders:
            o = self.order(i)
            self.send(self.market, "offer", o.order_id, keccak(b"good" if good else b"bad"), "https://m.example",
                      HEAD, TAIL, sender=self.sellers[seller], value=o.offer_bond)

    @rule(i=st.integers(0, 9))
    def decline(self, i):
        if self.orders:
            o = self.order(i)
            self.send(self.market, "decline", o.order_id, sender=self.parties[o.buyer])

    @rule(i=st.integers(0, 9))
    def release(self, i):
        if self.orders:
            o = self.order(i)
            self.send(self.market, "release_data", o.order_id, sender=self.parties[o.buyer])

    @rule(i=st.integers(0, 9))
    def serve(self, i):
        if self.orders:
            o = self.order(i)
            if o.seller in self.parties:
                crew = [w.address for w in self.crew[: o.workers]]
                self.send(self.market, "serve", o.order_id, crew, [keccak(a.encode()) for a in crew],
                          sender=self.parties[o.seller])

    # ------------------------------------------------------------ the evaluation round

    @rule(i=st.integers(0, 9), seats=st.integers(1, 3))
    def join(self, i, seats):
        if self.orders:
            o = self.order(i)
            for w in self.crew[:seats]:
                self.send(self.board, "join", o.task_id, sender=w, value=o.deposit)
            for w in self.crew[:seats]:
                self.send(self.market, "present_key", o.order_id, keccak(w.address.encode()), sender=w)

    @rule(i=st.integers(0, 9), correct=st.integers(0, SAMPLES), plan=st.sampled_from(["agree", "junk", "hide"]))
    def play(self, i, correct, plan):
        if not self.orders:
            return
        o = self.order(i)
        task = o.task_id
        if self.board.phase(task) != COMMIT:
            return
        bits = [1] * correct + [0] * (SAMPLES - correct)
        truth = keccak(encode_bits(bits))
        crew = self.crew[: o.workers]
        results = [truth] * len(crew)
        if plan == "junk":
            results[-1] = keccak(b"junk")
        for w, result in zip(crew, results):
            salt = keccak(w.address.encode())
            self.send(self.board, "commit", task, self.board.commitment_of(result, salt, w, task), sender=w)
        if self.board.phase(task) != REVEAL:
            return
        for w, result in zip(crew, results):
            if plan != "hide" or w != crew[-1]:
                self.send(self.board, "reveal", task, result, keccak(w.address.encode()), sender=w)
        self.bits[task] = bits

    @rule(blocks=st.integers(1, 2 * WINDOW))
    def mine(self, blocks):
        self.chain.mine(blocks)

    @rule(i=st.integers(0, 9), serve=st.booleans(), correct=st.integers(0, SAMPLES),
          plan=st.sampled_from(["agree", "agree", "junk", "hide", "unstaffed"]))
    def progress(self, i, serve, correct, plan):
        """Take an order one step down the honest path (offer, release, a full roster, serve,
        play, advance, finalize), so that random runs reach every end."""
        if not self.orders:
            return
        o = self.order(i)
        if o.stage == Stage.OPEN:
            self.offer(i, 0, correct > SAMPLES // 2)
        elif o.stage == Stage.OFFERED:
            self.release(i)
        elif o.stage == Stage.EVALUATING:
            phase = self.board.phase(o.task_id)
            if phase == 1 and plan != "unstaffed":
                self.join(i, o.workers)
            elif phase == 1:
                self.chain.mine(JOIN_WINDOW + 1)
            elif phase == COMMIT and serve and not o.exposed or phase == COMMIT and o.exposed:
                self.serve(i)
                self.play(i, correct, plan if plan != "unstaffed" else "agree")
            elif phase == COMMIT:
                self.play(i, correct, plan if plan != "unstaffed" else "agree")
            elif phase == REVEAL:
                self.chain.mine(WINDOW + 1)
            else:
                self.advance(i, 0)
                self.finalize(i)

    # ------------------------------------------------------------ anyone

    @rule(i=st.integers(0, 9), anyone=st.integers(0, 3))
    def advance(self, i, anyone):
        if not self.orders:
            return
        o = self.order(i)
        before = self.market.forfeited()
        receipt = self.send(self.market, "advance", o.order_id, sender=self.crew[anyone])
        after = self.view(o.order_id)
        if receipt is not None and after.stage == Stage.UNEVALUATED and o.stage == Stage.EVALUATING \
                and after.agreed_at == 0 and self.board.phase(after.task_id) != AGREED:
            forfeit = 0
            if after.exposed and after.filled < after.max_rounds:
                price_and_reward = after.price + after.reward
                forfeit = price_and_reward * (after.max_rounds - after.filled) // after.max_rounds
            if after.exposed:
                forfeit += o.bond  # a served model left unevaluated: the bond too
            assert self.market.forfeited() - before == forfeit

    @rule(i=st.integers(0, 9))
    def finalize(self, i):
        if self.orders:
            o = self.order(i)
            if o.task_id in self.bits:
                self.send(self.market, "finalize", o.order_id, bits_body(self.bits[o.task_id]),
                          sender=self.buyers[0])

    @rule(i=st.integers(0, 9), anyone=st.integers(0, 3))
    def cancel(self, i, anyone):
        if self.orders:
            self.send(self.market, "cancel", self.order(i).order_id, sender=self.crew[anyone])

    @rule(i=st.integers(0, 9))
    def claim(self, i):
        if self.orders:
            for party in self.parties.values():
                owed = self.market.owed(self.order(i).order_id, party.address)
                receipt = self.send(self.market, "claim", self.order(i).order_id, sender=party)
                assert (receipt is not None) == (owed > 0)
        forfeited = self.market.forfeited()
        assert (self.send(self.market, "sweep", sender=self.buyers[1]) is not None) == (forfeited > 0)


    # ------------------------------------------------------------ invariants

    def declined(self, order) -> int:
        """Declined bonds the order still owes: what `owed` gives beyond escrow and bond."""
        total = 0
        for party in self.parties:
            owed = self.market.owed(order.order_id, party)
            if order.stage >= Stage.BOUGHT:
                if party == (order.seller if order.stage == Stage.BOUGHT else order.buyer):
                    owed -= order.escrow
                if party == order.seller:
                    owed -= order.bond
            assert owed >= 0
            total += owed
        return total

    @invariant()
    def holds_what_it_owes(self):
        if not hasattr(self, "market"):
            return
        orders = [self.view(o) for o in self.orders]
        held = sum(o.escrow + o.bond + self.declined(o) for o in orders) + self.market.forfeited()
        assert self.market.balance == held

    def teardown(self):
        """Drive every order to an end; everyone claims; the market ends empty."""
        if not hasattr(self, "market"):
            return
        for _ in range(40):
            live = [o for o in map(self.view, self.orders) if o.stage < Stage.BOUGHT]
            if not live:
                break
            self.chain.mine(JOIN_WINDOW + 1)
            for o in live:
                self.send(self.market, "cancel", o.order_id, sender=self.crew[0])
                self.send(self.market, "advance", o.order_id, sender=self.crew[0])
        for order_id in self.orders:
            ended = self.view(order_id)
            assert ended.stage >= Stage.BOUGHT
            MarketMachine.ended.add((Stage(ended.stage).name, bool(ended.exposed)))
            for party in self.parties.values():
                if self.market.owed(order_id, party.address):
                    assert self.send(self.market, "claim", order_id, sender=party) is not None
        if self.market.forfeited():
            assert self.send(self.market, "sweep", sender=self.buyers[1]) is not None
        assert self.market.balance == 0


def test_market_fuzz(accounts, chain, project):
    MarketMachine.ctx = {"accounts": accounts, "chain": chain, "project": project}
    run_state_machine_as_test(MarketMachine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))


@pytest.mark.slow  # each end is played in tests/board/test_purchase.py
def test_the_machine_reaches_every_end(accounts, chain, project):
    """The same rules and checks, driven down each path the random runs may miss: bought, refused
    (served, and not served), a served model left unevaluated (forfeit), never served (none), and
    a declined then re-offered order."""
    MarketMachine.ctx = {"accounts": accounts, "chain": chain, "project": project}
    MarketMachine.ended = set()
    m = MarketMachine()
    m.deploy()
    plans = [  # (rounds, serve, correct, plan of each round)
        (2, True, 16, ["agree"]),                        # bought
        (2, True, 2, ["agree"]),                         # refused, served
        (2, False, 0, ["agree"]),                        # refused, never served: no model
        (3, True, 16, ["junk", "unstaffed", "unstaffed"]),  # served, then left unevaluated
        (2, False, 16, ["unstaffed", "unstaffed"]),      # never staffed: refunded in full
    ]
    for i, (rounds, serve, correct, round_plans) in enumerate(plans):
        m.open(buyer=i % 2, price=1000 + i, rounds=rounds, workers=3, bond=77)
        for plan in round_plans:
            for _ in range(8):
                before = m.order(i).task_id, m.order(i).stage
                m.progress(i, serve, correct, plan)
                m.holds_what_it_owes()
                if m.order(i).task_id != before[0] and before[0] or m.order(i).stage >= Stage.BOUGHT:
                    break
        for _ in range(6):
            if m.order(i).stage >= Stage.BOUGHT:
                break
            m.progress(i, serve, correct, "agree")
            m.holds_what_it_owes()
    m.open(buyer=0, price=5, rounds=1, workers=2, bond=9)
    m.offer(5, 0, True)
    m.decline(5)
    m.holds_what_it_owes()
    m.claim(5)
    m.holds_what_it_owes()
    m.teardown()
    assert {("BOUGHT", True), ("REFUSED", True), ("REFUSED", False), ("UNEVALUATED", True),
            ("UNEVALUATED", False)} <= MarketMachine.ended
    assert m.market.balance == 0
