"""ModelPurchase on chain: the precision bar, the bitstring encoding, every board outcome, each
sabotage and deadline path, serving the model to a full roster only, offer bonds, and the ether
invariant (the contract's balance equals its orders' escrows and bonds, declined bonds not yet
claimed and forfeits not yet swept) after every transaction. tests/board/test_purchase_fuzz.py plays
random sequences of the same calls."""

import random

import ape
import pytest
from eth_utils import keccak

from crowdml_compute.digest import bits_body, encode_bits
EVALUATION_SLICES = 2  # exact.EVALUATION_SLICES (exact.py imports jax, the plugin has none)
from ape_crowdml.purchase import Stage, fill_template, split_template
from crowdml_compute.spec import make_spec

PRICE = 3 * 10**16
REWARD = 3 * 10**15  # splits evenly over 3 workers
DEPOSIT = 2 * 10**16
ROUNDS = 4  # ROUNDS * DEPOSIT / 2 = 0.04 ETH >= PRICE + REWARD = 0.033 ETH, as open_order requires
BOND = 5 * 10**15  # what an offer locks: the buyer's if the model is refused
WINDOW = 10  # the shortest commit window an order may ask for
SAMPLES = 200
THRESHOLD = 9000
MODEL = keccak(b"the seller's model")
MODEL_URI = "https://models.example/mlp.crowdml"
OFFER_BLOCKS, RELEASE_BLOCKS, FINALIZE_BLOCKS = 50, 10, 10

AGREED, DISAGREED, FAILED, ABORTED = 6, 7, 8, 9


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    data = tmp_path_factory.mktemp("purchase") / "test.npz"
    data.write_bytes(b"the buyer's test set")
    spec = make_spec("jobs/evaluate_classifier.py", data, {
        "model_digest": "0x" + "0" * 64, "model_uri": "x", "subset_size": SAMPLES},
        data_uri="https://buyer.example/test.npz")
    head, tail = split_template(spec)
    return head, tail, keccak(b"the buyer's test set")


@pytest.fixture
def buyer(accounts):
    return accounts[0]


@pytest.fixture
def seller(accounts):
    return accounts[8]


@pytest.fixture
def crew(accounts):
    return [accounts[1], accounts[2], accounts[3]]


@pytest.fixture
def market(project, board, buyer):
    return project.ModelPurchase.deploy(board, sender=buyer)


class Ledger:
    """Checks the ether invariant after each transaction it is handed. `declined` counts the
    bonds of declined offers not yet claimed (the tests that decline keep it)."""

    def __init__(self, market):
        self.market = market
        self.declined = 0

    def owed(self) -> int:
        orders = [self.market.order(i) for i in range(1, self.market.order_count() + 1)]
        return (sum(o.escrow + o.bond for o in orders) + self.declined
                + self.market.forfeited())

    def check(self, receipt=None):
        assert self.market.balance == self.owed()
        return receipt


@pytest.fixture
def ledger(market):
    return Ledger(market)


def open_order(market, buyer, template, ledger, *, price=PRICE, threshold=THRESHOLD,
               samples=SAMPLES, rounds=ROUNDS, deposit=DEPOSIT, reward=REWARD, test_data=None,
               window=WINDOW, release=RELEASE_BLOCKS, finalize=FINALIZE_BLOCKS, workers=3,
               bond=BOND):
    from ape import chain

    head, tail, template_data = template
    receipt = market.open_order(
        price, threshold, samples, test_data or template_data, head, tail,
        (workers, deposit, reward, window, window, window),
        (chain.blocks.head.number + OFFER_BLOCKS, release, finalize, rounds), bond,
        value=price + reward, sender=buyer)
    ledger.check()
    return receipt.decode_logs(market.OrderOpened)[0].order_id


def offer(market, seller, order_id, template, ledger, model=MODEL, uri=MODEL_URI, bond=BOND):
    head, tail, _ = template
    ledger.check(market.offer(order_id, model, uri, head, tail, value=bond, sender=seller))


def released(market, buyer, seller, template, ledger, **terms) -> int:
    order_id = open_order(market, buyer, template, ledger, **terms)
    offer(market, seller, order_id, template, ledger)
    ledger.check(market.release_data(order_id, sender=buyer))
    return order_id


def bits_with(correct: int, samples: int = SAMPLES) -> list[int]:
    bits = [1] * correct + [0] * (samples - correct)
    random.Random(correct * 7 + samples).shuffle(bits)
    return bits


def play(board, task_id, crew, results, chain, *, join=True):
    """Workers join, commit and reveal `results` (None: commits but never opens); the task is
    left for the market to settle."""
    if join:
        for w in crew:
            board.join(task_id, value=DEPOSIT, sender=w)
    for w, result in zip(crew, results):
        salt = keccak(w.address.encode())
        board.commit(task_id, board.commitment_of(result or b"\x01" * 32, salt, w, task_id), sender=w)
    for w, result in zip(crew, results):
        if result is not None:
            board.reveal(task_id, result, keccak(w.address.encode()), sender=w)
    if None in results:
        chain.mine(2 * WINDOW + 1)  # past the reveal window, which ends after the commit window


def serve(market, order_id, seller, crew, ledger):
    """The seller says it served the round's roster (the contract sees no bytes)."""
    boxes = [keccak(b"sealed for " + w.address.encode()) for w in crew]
    return ledger.check(market.serve(order_id, list(crew), boxes, sender=seller))


def agree_on(board, task_id, crew, bits, chain):
    digest = keccak(encode_bits(bits))
    play(board, task_id, crew, [digest] * len(crew), chain)


# ---------------------------------------------------------------- the spec


def test_offer_fills_the_template_on_chain_as_python_does(market, buyer, seller, template, ledger):
    head, tail, test_data = template
    order_id = open_order(market, buyer, template, ledger)
    offer(market, seller, order_id, template, ledger)
    spec = fill_template(head, tail, MODEL, MODEL_URI)
    assert spec.hparams == {"model_digest": "0x" + MODEL.hex(), "model_uri": MODEL_URI,
                            "subset_size": SAMPLES, "arithmetic": "exact",
                            "exact_slices": EVALUATION_SLICES}
    assert market.order(order_id).spec == spec.digest()
    assert market.spec_digest(head, MODEL, MODEL_URI, tail) == spec.digest()
    assert spec.data_digest == "0x" + test_data.hex()


@pytest.mark.parametrize("uri", ['a"b', "a\\b", "a b", "", "\u00e9"])
def test_a_uri_that_json_would_escape_is_refused(market, buyer, seller, template, ledger, uri):
    order_id = open_order(market, buyer, template, ledger)
    head, tail, _ = template
    with ape.reverts():
        market.offer(order_id, MODEL, uri, head, tail, value=BOND, sender=seller)


def test_offer_needs_the_orders_template(market, buyer, seller, template, ledger):
    order_id = open_order(market, buyer, template, ledger)
    head, tail, _ = template
    with ape.reverts("not the order's template"):
        market.offer(order_id, MODEL, MODEL_URI, head + b" ", tail, value=BOND, sender=seller)
    with ape.reverts("empty model digest"):
        market.offer(order_id, b"\x00" * 32, MODEL_URI, head, tail, value=BOND, sender=seller)


# ---------------------------------------------------------------- the bar


@pytest.mark.parametrize("samples,threshold,correct,bought", [
    (200, 9000, 180, True),     # exactly at the bar
    (200, 9000, 179, False),    # one sample below
    (200, 9000, 181, True),     # one above
    (333, 9000, 300, True),     # 333 * 0.9 = 299.7: 300 is the first count that passes
    (333, 9000, 299, False),
    (257, 10000, 257, True),    # one bit into a second word; a perfect model
    (257, 10000, 256, False),
    (256, 5000, 128, True),     # a whole word
    (9, 5000, 4, False),        # a length that is not a multiple of 8
    (9, 5000, 5, True),
    (4096, 9000, 3687, True),   # 4096 * 0.9 = 3686.4
    (4096, 9000, 3686, False),
    (16384, 5000, 8192, True),  # the most samples an order takes: 64 words
])
def test_precision_decides_at_the_bar(market, board, buyer, seller, crew, template, ledger, chain,
                                      samples, threshold, correct, bought, tmp_path):
    head, tail = _template_for(samples, tmp_path)
    local = (head, tail, template[2])
    order_id = released(market, buyer, seller, local, ledger, samples=samples, threshold=threshold)
    bits = bits_with(correct, samples)
    agree_on(board, market.order(order_id).task_id, crew, bits, chain)
    ledger.check(market.advance(order_id, sender=seller))  # settles the board task
    receipt = ledger.check(market.finalize(order_id, bits_body(bits), sender=seller))
    log = receipt.decode_logs(market.Finalized)[0]
    assert (log.correct, log.samples, log.bought) == (correct, samples, bought)
    # Bought: the seller gets the price and its bond back; refused: the buyer its price, and
    # the bond is forfeited to the sink (a buyer must gain nothing from a refusal).
    payee = seller if bought else buyer
    assert market.owed(order_id, payee) == PRICE + (BOND if bought else 0)
    assert market.forfeited() == (0 if bought else BOND)
    assert market.order(order_id).stage == (Stage.BOUGHT if bought else Stage.REFUSED)
    other = buyer if bought else seller
    assert market.owed(order_id, other) == 0
    with ape.reverts("nothing to claim"):
        market.claim(order_id, sender=other)
    before = payee.balance
    receipt = ledger.check(market.claim(order_id, sender=payee))
    assert payee.balance - before + receipt.total_fees_paid == PRICE + (BOND if bought else 0)
    assert market.balance == market.forfeited()


def _template_for(samples, tmp_path):
    data = tmp_path / "test.npz"
    data.write_bytes(b"the buyer's test set")
    return split_template(make_spec("jobs/evaluate_classifier.py", data, {
        "model_digest": "0x" + "0" * 64, "model_uri": "x", "subset_size": samples}))


def test_a_bitstring_that_is_not_the_agreed_one_is_refused(market, board, buyer, seller, crew,
                                                           template, ledger, chain):
    order_id = released(market, buyer, seller, template, ledger)
    bits = bits_with(185)
    agree_on(board, market.order(order_id).task_id, crew, bits, chain)
    body = bits_body(bits)
    flipped = bytearray(body)
    flipped[0] ^= 0x80
    with ape.reverts("no agreed result"):  # the board has not settled yet
        market.finalize(order_id, body, sender=seller)
    market.advance(order_id, sender=seller)
    with ape.reverts("bitstring does not match"):
        market.finalize(order_id, bytes(flipped), sender=seller)
    with ape.reverts("wrong bitstring length"):
        market.finalize(order_id, body[:-1], sender=seller)
    with ape.reverts("wrong bitstring length"):
        market.finalize(order_id, body + b"\x00" * 32, sender=seller)
    padded = bytearray(body)
    padded[-1] |= 1  # a padding bit: not in the agreed encoding
    with ape.reverts("bitstring does not match"):
        market.finalize(order_id, bytes(padded), sender=seller)
    ledger.check(market.finalize(order_id, body, sender=seller))
    assert market.order(order_id).stage == Stage.BOUGHT


def test_padding_bits_never_count_as_samples(market, board, buyer, seller, crew, template, ledger,
                                             chain):
    # All n workers agreeing on junk is the paper's own limit; even then, only `samples` bits count.
    order_id = released(market, buyer, seller, template, ledger)
    bits = bits_with(179)
    body = bytearray(bits_body(bits))
    body[-1] = 0xFF  # 200 bits end in the 7th word: its last 56 bits are padding
    encoding = b"crowdml/bits/v2\n" + SAMPLES.to_bytes(32, "big") + bytes(body)
    play(board, market.order(order_id).task_id, crew, [keccak(encoding)] * 3, chain)
    market.advance(order_id, sender=seller)
    receipt = ledger.check(market.finalize(order_id, bytes(body), sender=seller))
    assert receipt.decode_logs(market.Finalized)[0].correct == 179
    assert market.order(order_id).stage == Stage.REFUSED


@pytest.fixture
def words():
    rng = random.Random(8)
    return [0, 1, 2**255, 2**256 - 1, 2**128 - 1] + [rng.getrandbits(256) for _ in range(20)]


def test_popcount_matches_python(market, words):
    for word in words:
        assert market.popcount(word) == bin(word).count("1")


# ---------------------------------------------------------------- order of steps


def test_no_offer_once_an_offer_is_locked_or_the_data_released(market, buyer, seller, accounts,
                                                               template, ledger):
    order_id = open_order(market, buyer, template, ledger)
    offer(market, seller, order_id, template, ledger)
    head, tail, _ = template
    with ape.reverts("not open for offers"):
        market.offer(order_id, keccak(b"another"), MODEL_URI, head, tail, value=BOND,
                     sender=accounts[7])
    ledger.check(market.release_data(order_id, sender=buyer))
    with ape.reverts("not open for offers"):
        market.offer(order_id, keccak(b"another"), MODEL_URI, head, tail, value=BOND,
                     sender=accounts[7])
    with ape.reverts("no offer to evaluate"):
        market.release_data(order_id, sender=buyer)


def test_only_the_buyer_releases_and_not_before_an_offer(market, buyer, seller, template, ledger):
    order_id = open_order(market, buyer, template, ledger)
    with ape.reverts("no offer to evaluate"):
        market.release_data(order_id, sender=buyer)
    offer(market, seller, order_id, template, ledger)
    with ape.reverts("only the buyer"):
        market.release_data(order_id, sender=seller)
    with ape.reverts("unknown order"):
        market.release_data(order_id + 1, sender=buyer)


def test_release_publishes_a_chain_coin_task_with_the_orders_terms(market, board, buyer, seller,
                                                                   template, ledger):
    order_id = released(market, buyer, seller, template, ledger)
    order = market.order(order_id)
    task = board.task(order.task_id)
    assert (task.requester, task.spec, task.data) == (market.address, order.spec, template[2])
    assert (task.workers, task.deposit, task.reward) == (3, DEPOSIT, REWARD)
    # No coin hash: the coin comes from the chain, so COIN_WITHHELD can never happen.
    assert task.coin_hash == b"\x00" * 32
    assert order.escrow == PRICE and board.balance == REWARD


@pytest.mark.parametrize("change,reason", [
    ({"price": 0}, "price must be positive"),
    ({"threshold": 0}, "threshold out of range"),
    ({"threshold": 10001}, "threshold out of range"),
    ({"samples": 0}, "samples out of range"),
    ({"samples": 16385}, "samples out of range"),
    ({"reward": REWARD + 1}, "reward must split evenly"),
    ({"deposit": DEPOSIT + 1}, "deposit must be even"),
    ({"rounds": 0}, "rounds out of range"),
    ({"test_data": b"\x00" * 32}, "empty test data digest"),
    ({"rounds": 3}, "deposit too small for the price"),  # 3 * 0.01 < 0.033 ETH
    # A buyer squeezing the seller's finalize window, or a round's windows, to close the order
    # unevaluated; a release window whose end would overflow and lock the escrow.
    ({"finalize": 1}, "window too short"),
    ({"finalize": 9}, "window too short"),
    ({"window": 1}, "window too short"),
    ({"release": 1}, "window too short"),
    ({"release": 2**256 - 1}, "window too long"),
    ({"finalize": 2**24}, "window too long"),
    # A roster nobody staffs kept every round unfilled, hence free for a buyer that saw the model.
    ({"workers": 33}, "too many workers"),
    ({"workers": 1024}, "too many workers"),
    # The seller serves in the commit window's first half; the job needs the second.
    ({"window": 9}, "commit window too short"),
])
def test_open_order_refuses_bad_terms(market, buyer, template, ledger, change, reason):
    with ape.reverts(reason):
        open_order(market, buyer, template, ledger, **change)


def test_open_order_needs_price_plus_reward(market, buyer, template):
    from ape import chain

    head, tail, test_data = template
    with ape.reverts("send price + reward"):
        market.open_order(PRICE, THRESHOLD, SAMPLES, test_data, head, tail,
                          (3, DEPOSIT, REWARD, WINDOW, WINDOW, WINDOW),
                          (chain.blocks.head.number + 9, 5, 5, ROUNDS), BOND, value=PRICE,
                          sender=buyer)


def test_stray_ether_is_refused(market, accounts):
    with ape.reverts("only the board pays in"):
        accounts[5].transfer(market, 1)


# ---------------------------------------------------------------- outcomes and sabotage


def junk(worker) -> bytes:
    return keccak(b"junk of " + worker.address.encode())


def fail_round(board, market, order_id, crew, how, chain):
    """Make the order's current task end DISAGREED, FAILED or ABORTED."""
    task_id = market.order(order_id).task_id
    truth = keccak(encode_bits(bits_with(190)))
    if how == DISAGREED:
        play(board, task_id, crew, [truth, truth, junk(crew[2])], chain)
    elif how == FAILED:
        play(board, task_id, crew, [truth, truth, None], chain)
    else:
        board.join(task_id, value=DEPOSIT, sender=crew[0])
        chain.mine(WINDOW + 1)


@pytest.mark.parametrize("how", [DISAGREED, FAILED, ABORTED])
def test_a_task_that_does_not_agree_is_retried_then_refunds_the_buyer(
        market, board, buyer, seller, crew, template, ledger, chain, how):
    order_id = released(market, buyer, seller, template, ledger)
    tasks = []
    for round_ in range(1, ROUNDS + 1):
        order = market.order(order_id)
        assert order.rounds == round_ and order.stage == Stage.EVALUATING
        tasks.append(order.task_id)
        fail_round(board, market, order_id, crew, how, chain)
        receipt = ledger.check(market.advance(order_id, sender=seller))
        assert board.phase(tasks[-1]) == how
        assert receipt.decode_logs(market.RoundFailed)[0].outcome == how
    assert len(set(tasks)) == ROUNDS  # a fresh task (fresh coin, fresh roster) each round
    order = market.order(order_id)
    assert order.stage == Stage.UNEVALUATED and order.escrow == PRICE + REWARD
    # Never served, so nothing forfeited: the buyer its escrow, the seller its bond.
    assert market.owed(order_id, buyer) == PRICE + REWARD and market.owed(order_id, seller) == BOND
    ledger.check(market.claim(order_id, sender=buyer))
    ledger.check(market.claim(order_id, sender=seller))
    assert market.balance == 0


@pytest.mark.parametrize("saboteur,how,lost_per_round", [
    ("buyer", "junk", DEPOSIT // 2),   # a good model: the buyer wants it unpaid
    ("buyer", "hide", DEPOSIT),
    ("seller", "junk", DEPOSIT // 2),  # a bad model: the seller wants it paid
    ("seller", "hide", DEPOSIT),
])
def test_sabotage_never_pays(market, board, buyer, seller, accounts, template, ledger, chain,
                             saboteur, how, lost_per_round):
    # The saboteur holds one of the 3 seats every round; two honest workers reveal the truth:
    # 195 of 200 right (good model) when the buyer sabotages, 150 (bad) when the seller does.
    sabotaging = buyer if saboteur == "buyer" else seller
    crew = [accounts[1], accounts[2], sabotaging]
    truth = keccak(encode_bits(bits_with(195 if saboteur == "buyer" else 150)))
    sabotage = None if how == "hide" else keccak(encode_bits([1] * SAMPLES))  # or: all right
    order_id = released(market, buyer, seller, template, ledger)
    lost = 0
    for _ in range(ROUNDS):
        task_id = market.order(order_id).task_id
        for w in crew:
            board.join(task_id, value=DEPOSIT, sender=w)
        serve(market, order_id, seller, crew, ledger)  # the buyer's seat sees the model
        play(board, task_id, crew, [truth, truth, sabotage], chain, join=False)
        ledger.check(market.advance(order_id, sender=accounts[1]))
        assert board.phase(task_id) == (FAILED if how == "hide" else DISAGREED)
        lost += DEPOSIT - board.owed(task_id, sabotaging)
    order = market.order(order_id)
    assert order.stage == Stage.UNEVALUATED and order.rounds == ROUNDS and order.filled == ROUNDS
    # Every round filled, so the buyer forfeits nothing beyond its seat's deposits; the model
    # was served and never agreed on, so the seller's bond is forfeited.
    assert market.owed(order_id, buyer) == PRICE + REWARD and market.owed(order_id, seller) == 0
    assert market.forfeited() == BOND
    assert lost == ROUNDS * lost_per_round
    if saboteur == "buyer":
        # Refunded in full, it kept the model for `lost`; honest, it would have paid
        # price + reward. open_order's rule makes the first at least the second.
        assert lost >= PRICE + REWARD
    else:
        # Unpaid either way; honest, the refused seller would have lost nothing.
        assert lost > 0


def test_a_retry_that_agrees_decides_as_usual(market, board, buyer, seller, crew, template,
                                              ledger, chain):
    order_id = released(market, buyer, seller, template, ledger)
    fail_round(board, market, order_id, crew, DISAGREED, chain)
    ledger.check(market.advance(order_id, sender=seller))
    bits = bits_with(181)
    agree_on(board, market.order(order_id).task_id, crew, bits, chain)
    ledger.check(market.advance(order_id, sender=seller))
    ledger.check(market.finalize(order_id, bits_body(bits), sender=buyer))
    assert market.order(order_id).stage == Stage.BOUGHT
    assert market.owed(order_id, seller) == PRICE + BOND
    assert market.order(order_id).rounds == 2


# ---------------------------------------------------------------- deadlines


def test_buyer_cancels_before_any_offer_anyone_after_the_offer_deadline(
        market, buyer, seller, template, ledger, chain):
    first = open_order(market, buyer, template, ledger)
    ledger.check(market.cancel(first, sender=buyer))
    assert market.order(first).stage == Stage.CANCELLED and market.owed(first, buyer) == PRICE + REWARD
    second = open_order(market, buyer, template, ledger)
    with ape.reverts("offer window still open"):
        market.cancel(second, sender=seller)
    chain.mine(OFFER_BLOCKS + 1)
    head, tail, _ = template
    with ape.reverts("offer deadline passed"):
        market.offer(second, MODEL, MODEL_URI, head, tail, value=BOND, sender=seller)
    ledger.check(market.cancel(second, sender=seller))
    assert market.owed(second, buyer) == PRICE + REWARD
    with ape.reverts("evaluation already started"):
        market.cancel(second, sender=buyer)


def test_an_offer_whose_data_is_never_released_lapses(market, buyer, seller, template, ledger, chain):
    order_id = open_order(market, buyer, template, ledger)
    offer(market, seller, order_id, template, ledger)
    with ape.reverts("release window still open"):
        market.cancel(order_id, sender=seller)
    chain.mine(RELEASE_BLOCKS + 1)
    with ape.reverts("release window closed"):
        market.release_data(order_id, sender=buyer)
    ledger.check(market.cancel(order_id, sender=seller))
    assert market.order(order_id).stage == Stage.LAPSED
    assert market.owed(order_id, buyer) == PRICE + REWARD and market.owed(order_id, seller) == BOND


def test_an_agreed_evaluation_nobody_finalizes_refunds_the_buyer(market, board, buyer, seller, crew,
                                                                template, ledger, chain):
    order_id = released(market, buyer, seller, template, ledger)
    bits = bits_with(199)
    agree_on(board, market.order(order_id).task_id, crew, bits, chain)
    receipt = ledger.check(market.advance(order_id, sender=buyer))
    deadline = receipt.decode_logs(market.AgreementSeen)[0].finalize_deadline
    with ape.reverts("finalize window still open"):
        market.advance(order_id, sender=buyer)
    chain.mine(deadline - 1 - chain.blocks.head.number)  # the next transaction lands at the deadline
    with ape.reverts("finalize window still open"):
        market.advance(order_id, sender=buyer)
    chain.mine(1)
    with ape.reverts("finalize window closed"):
        market.finalize(order_id, bits_body(bits), sender=seller)
    ledger.check(market.advance(order_id, sender=buyer))
    assert market.order(order_id).stage == Stage.UNEVALUATED
    # The price goes back; the reward paid the workers. The seller chose not to finalize:
    # nothing is forfeited, its bond comes back.
    assert market.owed(order_id, buyer) == PRICE and market.owed(order_id, seller) == BOND


def test_advance_waits_for_the_task(market, board, buyer, seller, crew, template, ledger, chain):
    order_id = open_order(market, buyer, template, ledger)
    with ape.reverts("not evaluating"):
        market.advance(order_id, sender=seller)
    offer(market, seller, order_id, template, ledger)
    ledger.check(market.release_data(order_id, sender=buyer))
    task_id = market.order(order_id).task_id
    with ape.reverts("evaluation still running"):  # joining, join window open
        market.advance(order_id, sender=seller)
    for w in crew:
        board.join(task_id, value=DEPOSIT, sender=w)
    with ape.reverts("evaluation still running"):  # commit window open
        market.advance(order_id, sender=seller)
    with ape.reverts("no agreed result"):
        market.finalize(order_id, bits_body(bits_with(190)), sender=seller)


def test_claim_pays_once_and_only_after_the_end(market, buyer, seller, template, ledger):
    order_id = open_order(market, buyer, template, ledger)
    with ape.reverts("nothing to claim"):
        market.claim(order_id, sender=buyer)
    ledger.check(market.cancel(order_id, sender=buyer))
    with ape.reverts("nothing to claim"):
        market.claim(order_id, sender=seller)
    ledger.check(market.claim(order_id, sender=buyer))
    with ape.reverts("nothing to claim"):
        market.claim(order_id, sender=buyer)
    assert market.owed(order_id, buyer) == 0


# ---------------------------------------------------------------- the model, to a full roster only


def test_the_model_is_served_to_a_full_roster_only(market, board, buyer, seller, crew, accounts,
                                                   template, ledger, chain):
    order_id = released(market, buyer, seller, template, ledger, window=20)
    task_id = market.order(order_id).task_id
    board.join(task_id, value=DEPOSIT, sender=crew[0])
    # Before the roster is full nobody may present a key, and nothing may be served.
    with ape.reverts("roster not full"):
        market.present_key(order_id, keccak(b"key"), sender=crew[0])
    with ape.reverts("roster not full"):
        serve(market, order_id, seller, crew[:1], ledger)
    assert market.serve_deadline(order_id) == 0
    for w in crew[1:]:
        board.join(task_id, value=DEPOSIT, sender=w)
    with ape.reverts("not on the roster"):
        market.present_key(order_id, keccak(b"key"), sender=buyer)
    with ape.reverts("empty key"):
        market.present_key(order_id, b"\x00" * 32, sender=crew[0])
    receipt = market.present_key(order_id, keccak(b"key"), sender=crew[0])
    log = receipt.decode_logs(market.KeyPresented)[0]
    assert (log.task_id, log.worker, log.key) == (task_id, crew[0].address, keccak(b"key"))
    with ape.reverts("only the seller"):
        serve(market, order_id, buyer, crew, ledger)
    with ape.reverts("one box per worker"):
        market.serve(order_id, list(crew), [keccak(b"box")], sender=seller)
    with ape.reverts("serve at least one worker"):
        market.serve(order_id, [], [], sender=seller)
    with ape.reverts("not on the roster"):
        market.serve(order_id, [buyer], [keccak(b"box")], sender=seller)
    deadline = market.serve_deadline(order_id)
    # The first half of the commit window.
    assert deadline == board.task(task_id).deadline - 20 // 2
    assert not market.order(order_id).exposed
    receipt = serve(market, order_id, seller, crew, ledger)
    served = receipt.decode_logs(market.ModelServed)[0]
    assert (served.task_id, list(served.workers)) == (task_id, [w.address for w in crew])
    order = market.order(order_id)
    assert order.served and order.exposed
    with ape.reverts("already served"):
        serve(market, order_id, seller, crew, ledger)
    with ape.reverts("already served"):
        market.present_key(order_id, keccak(b"late"), sender=crew[1])


def test_the_serve_window_closes_half_way_through_the_commit_window(
        market, board, buyer, seller, crew, template, ledger, chain):
    order_id = released(market, buyer, seller, template, ledger, window=20)
    task_id = market.order(order_id).task_id
    for w in crew:
        board.join(task_id, value=DEPOSIT, sender=w)
    chain.mine(market.serve_deadline(order_id) - chain.blocks.head.number)
    with ape.reverts("serve window closed"):
        serve(market, order_id, seller, crew, ledger)
    # The round is scored on no model: honest workers agree on all zeros, the model is refused
    # and the bond pays the buyer for its test data, public now.
    zeros = [0] * SAMPLES
    play(board, task_id, crew, [keccak(encode_bits(zeros))] * 3, chain, join=False)
    chain.mine(20)  # the reveal window, kept whole
    ledger.check(market.advance(order_id, sender=buyer))
    ledger.check(market.finalize(order_id, bits_body(zeros), sender=buyer))
    order = market.order(order_id)
    assert order.stage == Stage.REFUSED and not order.exposed
    assert market.owed(order_id, buyer) == PRICE and market.owed(order_id, seller) == 0
    assert market.forfeited() == BOND  # the seller that never served loses its bond


def rounds_until_closed(market, board, buyer, seller, order_id, plays, ledger, chain):
    """Play each round as `plays` says (a callable of task id, or None: nobody joins)."""
    for how in plays:
        task_id = market.order(order_id).task_id
        if how is None:
            chain.mine(WINDOW + 1)
        else:
            how(task_id)
        ledger.check(market.advance(order_id, sender=buyer))
    return market.order(order_id)


def test_a_buyer_that_saw_the_model_and_let_rounds_go_unfilled_forfeits(
        market, board, buyer, seller, accounts, sink, template, ledger, chain):
    # Issue 19's attack: the buyer holds a seat of a full round, sees the model, sabotages the
    # round, then lets every later round go unstaffed (ABORTED rounds cost no deposit).
    crew = [accounts[1], accounts[2], buyer]
    truth = keccak(encode_bits(bits_with(195)))  # a good model: the buyer wants it unpaid
    order_id = released(market, buyer, seller, template, ledger)

    def sabotaged(task_id):
        for w in crew:
            board.join(task_id, value=DEPOSIT, sender=w)
        serve(market, order_id, seller, crew, ledger)
        play(board, task_id, crew, [truth, truth, keccak(b"junk")], chain, join=False)

    order = rounds_until_closed(market, board, buyer, seller, order_id,
                                [sabotaged] + [None] * (ROUNDS - 1), ledger, chain)
    assert order.stage == Stage.UNEVALUATED and order.filled == 1 and order.exposed
    forfeit = (PRICE + REWARD) * (ROUNDS - 1) // ROUNDS
    assert market.forfeited() == forfeit + BOND  # and the served model's bond
    assert market.owed(order_id, buyer) == PRICE + REWARD - forfeit
    assert market.owed(order_id, seller) == 0
    first_task = order.task_id - ROUNDS + 1
    seat_lost = DEPOSIT - board.owed(first_task, buyer)
    assert seat_lost == DEPOSIT // 2
    # What the buyer lost for the model: its seat's half deposit and the forfeit, at least
    # what buying it would have cost.
    assert seat_lost + forfeit >= PRICE + REWARD
    # Anyone sweeps the forfeit to the board's sink, never to the seller (whose sabotage
    # must not pay either).
    sink_before = sink.balance
    ledger.check(market.sweep(sender=accounts[4]))
    assert sink.balance == sink_before + forfeit + BOND and market.forfeited() == 0
    with ape.reverts("nothing to sweep"):
        market.sweep(sender=accounts[4])


def test_unfilled_rounds_cost_nothing_while_the_model_was_never_served(
        market, board, buyer, seller, crew, template, ledger, chain):
    # The control: the same unfilled rounds without a served round refund the buyer in full.
    order_id = released(market, buyer, seller, template, ledger)
    order = rounds_until_closed(market, board, buyer, seller, order_id, [None] * ROUNDS,
                                ledger, chain)
    assert order.stage == Stage.UNEVALUATED and not order.exposed
    assert market.forfeited() == 0 and market.owed(order_id, buyer) == PRICE + REWARD


# ---------------------------------------------------------------- offers: bonded, declinable


def test_the_buyer_declines_a_junk_offer_and_takes_the_next(market, buyer, seller, accounts,
                                                            template, ledger):
    order_id = open_order(market, buyer, template, ledger)
    junk_seller = accounts[7]
    head, tail, _ = template
    with ape.reverts("send the offer bond"):
        market.offer(order_id, MODEL, MODEL_URI, head, tail, value=BOND - 1, sender=junk_seller)
    offer(market, junk_seller, order_id, template, ledger, model=keccak(b"junk"))
    with ape.reverts("only the buyer"):
        market.decline(order_id, sender=junk_seller)
    receipt = market.decline(order_id, sender=buyer)
    ledger.declined += BOND
    ledger.check(receipt)
    assert receipt.decode_logs(market.Declined)[0].bond == BOND
    order = market.order(order_id)
    assert order.stage == Stage.OPEN and order.bond == 0 and order.model == b"\x00" * 32
    # The order is open again: a real offer is taken, and the junk seller has its bond back.
    offer(market, seller, order_id, template, ledger)
    assert market.order(order_id).seller == seller.address
    assert market.owed(order_id, junk_seller) == BOND
    ledger.declined -= BOND
    ledger.check(market.claim(order_id, sender=junk_seller))
    ledger.check(market.release_data(order_id, sender=buyer))
    with ape.reverts("no offer to decline"):
        market.decline(order_id, sender=buyer)
