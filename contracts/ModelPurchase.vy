# pragma version ~=0.4.3
"""
@title crowdml model purchase
@license Apache-2.0
@notice The first instance of Lu, Tang and Wang (ICDMW 2018, §V): a buyer pays for
        a trained classifier only if its precision on the buyer's own test data
        reaches a bar. Workers evaluate the model through a TaskBoard, this
        contract being the task's requester; they agree on the bitstring "test
        sample i was classified correctly"; this contract recomputes the task's
        result digest from the bitstring, counts its ones and decides.

        open_order → offer → release_data → (advance)* → finalize, with a
        deadline at every step after which anyone can end the order.
@dev The evaluation spec is fixed by the buyer at open as a template, the spec's
     canonical JSON cut around the model's fields: head ++ <model digest hex>
     ++ '","model_uri":"' ++ <model uri> ++ tail. The seller's offer fills it in
     on chain, so neither side can name a spec other than "this model on the
     buyer's test set" (the seller checks the template before offering).

     The model is served only to a filled round's workers: each presents an
     X25519 key once the roster is full (`present_key`), the seller seals the
     model to each key and says so on chain (`serve`) within the first half of
     the commit window. A round the seller did not serve is evaluated on no
     model (every sample wrong), so honest workers still agree and the offer
     is refused.

     Sabotage: any non-AGREED evaluation (DISAGREED, FAILED, ABORTED,
     COIN_WITHHELD) is retried with a fresh task, up to `max_rounds`; after
     that the price returns to the buyer and the model stays unpaid. A seller
     gains nothing by sabotage (it is never paid without agreement); a buyer
     holding seats that sabotages a filled round loses at least deposit/2 on
     the board, and open_order requires max_rounds * deposit / 2 >= price +
     reward. A round that never filled costs nobody a deposit, so once the
     model was served, each round short of max_rounds filled ones forfeits
     (price + reward) / max_rounds of the buyer's refund to the board's sink:
     a buyer that saw the model and left the order unevaluated has lost at
     least price + reward, whichever terms it chose.

     Bonds: an offer locks the order's offer bond. A refused model's bond, and
     the bond of a served model whose order ended unevaluated, are forfeited
     to the board's sink (never paid to the buyer, who could otherwise profit
     from a refusal); otherwise the seller claims it back.

     Pull payments: an ended order's escrow is claimed by the seller of a
     BOUGHT order, else the buyer; the offer's bond, if not forfeited, by the
     seller. The balance always equals the orders' escrows and bonds, declined
     offers' bonds not yet claimed, and the forfeits not yet swept.
"""


import ITaskBoard


# @dev An order's terms and progress, as the `order` view returns them.
struct Order:
    buyer: address
    seller: address
    stage: uint256
    price: uint256
    reward: uint256
    escrow: uint256
    threshold: uint256
    samples: uint256
    test_data: bytes32
    template: bytes32
    workers: uint256
    deposit: uint256
    join_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    max_rounds: uint256
    rounds: uint256
    offer_deadline: uint256
    release_blocks: uint256
    finalize_blocks: uint256
    model: bytes32
    spec: bytes32
    step_start: uint256
    agreed_at: uint256
    task_id: uint256
    offer_bond: uint256
    bond: uint256
    filled: uint256
    served: bool
    exposed: bool


# @dev What an order fixes at open and offer; each field read only where needed.
struct Terms:
    buyer: address
    seller: address
    price: uint256
    reward: uint256
    test_data: bytes32
    template: bytes32
    workers: uint256
    deposit: uint256
    join_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    offer_deadline: uint256
    release_blocks: uint256
    model: bytes32
    spec: bytes32
    step_start: uint256
    offer_bond: uint256


# @dev What `finalize` and `advance` need, packed by hand into one storage word
#      (`_load`/`_save`): one cold SLOAD instead of eight keeps finalize for
#      4,096 samples under 60,000 gas beyond its calldata.
struct Progress:
    stage: uint256
    rounds: uint256
    max_rounds: uint256
    threshold: uint256
    samples: uint256
    finalize_blocks: uint256
    agreed_at: uint256
    task_id: uint256
    filled: uint256
    served: bool
    exposed: bool


# @dev The evaluation task's terms, as the board's publish takes them.
struct Evaluation:
    workers: uint256
    deposit: uint256
    reward: uint256
    join_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256


# @dev The order's deadlines: an absolute block for the offer, then windows.
struct Deadlines:
    offer_deadline: uint256
    release_blocks: uint256
    finalize_blocks: uint256
    max_rounds: uint256


# @dev A buyer opened an order and escrowed price + reward. The template is
#      published here so that a seller needs nothing but the chain.
event OrderOpened:
    order_id: indexed(uint256)
    buyer: indexed(address)
    price: uint256
    threshold: uint256
    samples: uint256
    test_data: bytes32
    template_head: Bytes[MAX_HEAD]
    template_tail: Bytes[MAX_TAIL]
    evaluation: Evaluation
    deadlines: Deadlines
    offer_bond: uint256


# @dev A seller locked its model and bonded its offer; `spec` is the
#      evaluation spec's digest.
event Offered:
    order_id: indexed(uint256)
    seller: indexed(address)
    model: bytes32
    model_uri: String[MAX_URI]
    spec: bytes32
    bond: uint256


# @dev The buyer declined an offer before releasing its data; the order is
#      open again and the seller may claim its bond back.
event Declined:
    order_id: indexed(uint256)
    seller: indexed(address)
    bond: uint256


# @dev A worker of the round's full roster named the key the model is sealed to.
event KeyPresented:
    order_id: indexed(uint256)
    task_id: uint256
    worker: indexed(address)
    key: bytes32


# @dev The seller uploaded the model sealed to each listed worker's key, as
#      the file whose keccak256 is the matching `boxes` entry, under the
#      offer's model URI.
event ModelServed:
    order_id: indexed(uint256)
    task_id: uint256
    workers: DynArray[address, MAX_EVALUATION_WORKERS]
    boxes: DynArray[bytes32, MAX_EVALUATION_WORKERS]


# @dev The buyer released its test data; evaluation starts.
event DataReleased:
    order_id: indexed(uint256)


# @dev An evaluation task was published on the board.
event RoundPublished:
    order_id: indexed(uint256)
    round: uint256
    task_id: uint256


# @dev An evaluation task ended without agreement; its reward came back.
event RoundFailed:
    order_id: indexed(uint256)
    task_id: uint256
    outcome: uint8


# @dev The evaluation agreed; the bitstring is due by `finalize_deadline`.
event AgreementSeen:
    order_id: indexed(uint256)
    task_id: uint256
    finalize_deadline: uint256


# @dev The precision was computed on chain and the order decided.
event Finalized:
    order_id: indexed(uint256)
    correct: uint256
    samples: uint256
    bought: bool


# @dev The order ended without a decision; `stage` says why. `forfeited`
#      left the buyer's refund for the board's sink (a served model left
#      unevaluated).
event Closed:
    order_id: indexed(uint256)
    stage: uint256
    refund: uint256
    forfeited: uint256


# @dev The forfeits collected so far were paid to the board's sink.
event Swept:
    sink: indexed(address)
    amount: uint256


# @dev `account` claimed the ended order's escrow.
event Claimed:
    order_id: indexed(uint256)
    account: indexed(address)
    amount: uint256


# Order stages.
STAGE_NONE: constant(uint256) = 0
STAGE_OPEN: constant(uint256) = 1
STAGE_OFFERED: constant(uint256) = 2
STAGE_EVALUATING: constant(uint256) = 3
STAGE_BOUGHT: constant(uint256) = 4
STAGE_REFUSED: constant(uint256) = 5
STAGE_CANCELLED: constant(uint256) = 6
STAGE_LAPSED: constant(uint256) = 7
STAGE_UNEVALUATED: constant(uint256) = 8

# TaskBoard phases this contract reads.
BOARD_JOINING: constant(uint8) = 1
BOARD_AWAITING_COIN: constant(uint8) = 2
BOARD_COMMIT: constant(uint8) = 3
BOARD_SETTLEABLE: constant(uint8) = 5
BOARD_AGREED: constant(uint8) = 6
BOARD_ABORTED: constant(uint8) = 9
# TaskBoard.worker_status of an address not on the roster.
BOARD_NOT_SEATED: constant(uint8) = 0

BPS: constant(uint256) = 10000
MAX_SAMPLES: constant(uint256) = 16384
MAX_BITS: constant(uint256) = MAX_SAMPLES // 8
MAX_ROUNDS: constant(uint256) = 16
# The most workers an evaluation may ask for: a roster must be able to fill (a
# buyer naming 1,024 seats nobody staffs kept every round unfilled, hence free).
MAX_EVALUATION_WORKERS: constant(uint256) = 32
MAX_HEAD: constant(uint256) = 1024
MAX_TAIL: constant(uint256) = 2048
MAX_URI: constant(uint256) = 256
MAX_WINDOW: constant(uint256) = 2**24 - 1
# The shortest windows an order may ask for: a round's workers need blocks to join, commit
# and reveal, the buyer to release its data, and the seller to finalize once the round
# agreed (a 1-block finalize window let the buyer close the order unevaluated first).
MIN_EVALUATION_WINDOW: constant(uint256) = 5
# The shortest commit window: the seller serves in its first half, and the workers must still
# run the evaluation and commit in the second.
MIN_EVALUATION_COMMIT: constant(uint256) = 10
MIN_RELEASE_BLOCKS: constant(uint256) = 5
MIN_FINALIZE_BLOCKS: constant(uint256) = 10

# Bit layout of `_progress` (offset; widths 8, 8, 8, 16, 16, 24, 40, 64, 8, 1, 1).
AT_ROUNDS: constant(uint256) = 8
AT_MAX_ROUNDS: constant(uint256) = 16
AT_THRESHOLD: constant(uint256) = 24
AT_SAMPLES: constant(uint256) = 40
AT_FINALIZE_BLOCKS: constant(uint256) = 56
AT_AGREED_AT: constant(uint256) = 80
AT_TASK_ID: constant(uint256) = 120
AT_FILLED: constant(uint256) = 184
AT_SERVED: constant(uint256) = 192
AT_EXPOSED: constant(uint256) = 193
BITS_8: constant(uint256) = 2**8 - 1
BITS_16: constant(uint256) = 2**16 - 1
BITS_24: constant(uint256) = 2**24 - 1
BITS_40: constant(uint256) = 2**40 - 1
BITS_64: constant(uint256) = 2**64 - 1

# The bitstring result encoding (ape_crowdml/digest.py `encode_bits`):
#   BITS_MAGIC ++ uint256 bit count, big-endian ++ the bits, MSB first,
#   zero-padded to whole 32-byte words.
BITS_MAGIC: constant(Bytes[16]) = b"crowdml/bits/v2\n"
# An evaluation task's spec URI on the board: "crowdml-order:<order id>". The
# spec is not a file anywhere: workers rebuild it from this contract's events
# (the task's requester) and check it against the task's spec digest.
ORDER_URI_SCHEME: constant(String[14]) = "crowdml-order:"
# What the canonical spec JSON holds between the model digest and its URI.
MODEL_URI_KEY: constant(Bytes[15]) = b'","model_uri":"'

# SWAR popcount masks: 0x5555…, 0x3333…, 0x0F0F…, 0x00FF00FF…, 0x00010001….
M1: constant(uint256) = max_value(uint256) // 3
M2: constant(uint256) = max_value(uint256) // 5
M4: constant(uint256) = max_value(uint256) // 17
M8: constant(uint256) = max_value(uint256) // 257
H16: constant(uint256) = max_value(uint256) // 65535


# @dev The board that runs every evaluation.
BOARD: public(immutable(ITaskBoard))
# The block this market was created in: where a reader's event scan starts.
CREATED_AT: public(immutable(uint256))

# @dev Number of orders opened; ids run 1..order_count. Written by `open_order`.
order_count: public(uint256)

# @dev Terms per order. Written by `open_order` and `offer`.
_terms: HashMap[uint256, Terms]

# @dev Packed `Progress` per order. Written by every state-changing call but `claim`.
_progress: HashMap[uint256, uint256]

# @dev Wei this contract holds for each order: the price, plus the reward while
#      it is not on the board; once ended, what its payee may claim. Written
#      when money moves.
_escrow: HashMap[uint256, uint256]

# @dev The current offer's bond per order, until its payee claims it. Written
#      by `offer`, `decline` and `claim`.
_bond: HashMap[uint256, uint256]

# @dev Bonds of declined offers, per order and seller, until claimed.
_declined: HashMap[uint256, HashMap[address, uint256]]

# @dev Forfeits of served models left unevaluated, not yet swept to the sink.
forfeited: public(uint256)



@deploy
def __init__(board: address):
    """
    @param board The TaskBoard that runs the evaluations.
    """
    assert board.is_contract, "board is not a contract"
    BOARD = ITaskBoard(board)
    CREATED_AT = block.number


# ---------------------------------------------------------------- buyer


@external
@payable
def open_order(
    price: uint256,
    threshold: uint256,
    samples: uint256,
    test_data: bytes32,
    template_head: Bytes[MAX_HEAD],
    template_tail: Bytes[MAX_TAIL],
    evaluation: Evaluation,
    deadlines: Deadlines,
    offer_bond: uint256,
) -> uint256:
    """
    @notice Open an order for a model, escrowing `price` plus one evaluation
            reward (msg.value must be their sum). The reward is reused by
            retries: a task that does not agree returns it.
    @param price Paid to the seller if the model reaches the bar.
    @param threshold The bar, in basis points of precision (1..10000).
    @param samples Test samples evaluated per task (the spec's subset_size).
    @param test_data keccak256 of the buyer's test set, released after an offer.
    @param template_head The spec's canonical JSON up to the model digest's hex.
    @param template_tail The spec's canonical JSON after the model URI.
    @param evaluation Workers, deposit, reward and windows of each evaluation task.
    @param deadlines Last block for an offer; blocks to release the data after
           an offer and to finalize after agreement; evaluation rounds allowed.
    @param offer_bond Wei an offer must lock: forfeited to the board's sink if
           the model is refused, or served and left unevaluated; else the
           seller's again.
    @return The new order id.
    """
    assert price > 0, "price must be positive"
    assert msg.value == price + evaluation.reward, "send price + reward"
    assert threshold > 0 and threshold <= BPS, "threshold out of range"
    assert samples > 0 and samples <= MAX_SAMPLES, "samples out of range"
    assert test_data != empty(bytes32), "empty test data digest"
    assert evaluation.workers >= 2, "need at least 2 workers"
    assert evaluation.workers <= MAX_EVALUATION_WORKERS, "too many workers"
    assert evaluation.reward > 0 and evaluation.reward % evaluation.workers == 0, "reward must split evenly"
    assert evaluation.deposit > 0 and evaluation.deposit % 2 == 0, "deposit must be even"
    assert evaluation.join_blocks >= MIN_EVALUATION_WINDOW and evaluation.commit_blocks >= MIN_EVALUATION_WINDOW and evaluation.reveal_blocks >= MIN_EVALUATION_WINDOW, "window too short"
    assert evaluation.commit_blocks >= MIN_EVALUATION_COMMIT, "commit window too short"
    assert evaluation.join_blocks <= MAX_WINDOW and evaluation.commit_blocks <= MAX_WINDOW and evaluation.reveal_blocks <= MAX_WINDOW, "window too long"
    assert deadlines.offer_deadline > block.number, "offer deadline passed"
    assert deadlines.release_blocks >= MIN_RELEASE_BLOCKS and deadlines.finalize_blocks >= MIN_FINALIZE_BLOCKS, "window too short"
    # Bounded above too: step_start + release_blocks must never overflow in release_data or
    # cancel, which would lock the escrow for good.
    assert deadlines.release_blocks <= MAX_WINDOW and deadlines.finalize_blocks <= MAX_WINDOW, "window too long"
    assert deadlines.max_rounds > 0 and deadlines.max_rounds <= MAX_ROUNDS, "rounds out of range"
    # A buyer that sabotages every round to keep the model unpaid loses at
    # least deposit/2 per round, and saves the price and the reward.
    assert deadlines.max_rounds * (evaluation.deposit // 2) >= price + evaluation.reward, "deposit too small for the price"

    order_id: uint256 = self.order_count + 1
    self.order_count = order_id
    self._terms[order_id] = Terms(
        buyer=msg.sender,
        seller=empty(address),
        price=price,
        reward=evaluation.reward,
        test_data=test_data,
        template=keccak256(abi_encode(template_head, template_tail)),
        workers=evaluation.workers,
        deposit=evaluation.deposit,
        join_blocks=evaluation.join_blocks,
        commit_blocks=evaluation.commit_blocks,
        reveal_blocks=evaluation.reveal_blocks,
        offer_deadline=deadlines.offer_deadline,
        release_blocks=deadlines.release_blocks,
        model=empty(bytes32),
        spec=empty(bytes32),
        step_start=block.number,
        offer_bond=offer_bond,
    )
    self._escrow[order_id] = msg.value
    p: Progress = empty(Progress)
    p.stage = STAGE_OPEN
    p.max_rounds = deadlines.max_rounds
    p.threshold = threshold
    p.samples = samples
    p.finalize_blocks = deadlines.finalize_blocks
    self._save(order_id, p)
    log OrderOpened(
        order_id=order_id,
        buyer=msg.sender,
        price=price,
        threshold=threshold,
        samples=samples,
        test_data=test_data,
        template_head=template_head,
        template_tail=template_tail,
        evaluation=evaluation,
        deadlines=deadlines,
        offer_bond=offer_bond,
    )
    return order_id


@external
def release_data(order_id: uint256):
    """
    @notice Say the test data is served at the template's data URI, and
            publish the first evaluation task. Only after an offer locked a
            model, so the seller cannot have trained on the data.
    @param order_id The order.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_OFFERED, "no offer to evaluate"
    assert msg.sender == self._terms[order_id].buyer, "only the buyer"
    assert block.number <= self._terms[order_id].step_start + self._terms[order_id].release_blocks, "release window closed"
    p.stage = STAGE_EVALUATING
    log DataReleased(order_id=order_id)
    self._publish_round(order_id, p, self._escrow[order_id])


@external
def decline(order_id: uint256):
    """
    @notice Turn down the locked offer before releasing the data, so that one
            offer cannot hold the order: it is open for offers again (until
            its offer deadline) and the seller may claim its bond back.
            Nothing was served, so nothing is lost.
    @param order_id The order.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_OFFERED, "no offer to decline"
    assert msg.sender == self._terms[order_id].buyer, "only the buyer"
    seller: address = self._terms[order_id].seller
    bond: uint256 = self._bond[order_id]
    self._bond[order_id] = 0
    self._declined[order_id][seller] += bond
    self._terms[order_id].seller = empty(address)
    self._terms[order_id].model = empty(bytes32)
    self._terms[order_id].spec = empty(bytes32)
    p.stage = STAGE_OPEN
    self._save(order_id, p)
    log Declined(order_id=order_id, seller=seller, bond=bond)


# ---------------------------------------------------------------- seller


@external
@payable
def offer(
    order_id: uint256,
    model: bytes32,
    model_uri: String[MAX_URI],
    template_head: Bytes[MAX_HEAD],
    template_tail: Bytes[MAX_TAIL],
):
    """
    @notice Lock a model into an open order, bonding the offer with exactly
            the order's offer bond. The evaluation spec is the order's
            template with this model's digest and URI filled in.
    @dev Serve the model only to a filled round's keys (`serve`): a buyer that
         saw it otherwise could let the order lapse and keep it.
    @param order_id The order.
    @param model keccak256 of the model file.
    @param model_uri The folder where the sealed copies will be (each under its
           keccak256): printable ASCII without quotes or backslashes, so
           that it sits in the JSON unescaped.
    @param template_head The order's template head, as published.
    @param template_tail The order's template tail, as published.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_OPEN, "not open for offers"
    assert block.number <= self._terms[order_id].offer_deadline, "offer deadline passed"
    assert msg.value == self._terms[order_id].offer_bond, "send the offer bond"
    assert model != empty(bytes32), "empty model digest"
    assert keccak256(abi_encode(template_head, template_tail)) == self._terms[order_id].template, "not the order's template"
    uri: Bytes[MAX_URI] = convert(model_uri, Bytes[MAX_URI])
    self._check_uri(uri)

    spec: bytes32 = keccak256(concat(template_head, self._hex(model), MODEL_URI_KEY, uri, template_tail))
    p.stage = STAGE_OFFERED
    self._save(order_id, p)
    self._terms[order_id].seller = msg.sender
    self._terms[order_id].model = model
    self._terms[order_id].spec = spec
    self._terms[order_id].step_start = block.number
    self._bond[order_id] = msg.value
    log Offered(order_id=order_id, seller=msg.sender, model=model, model_uri=model_uri, spec=spec, bond=msg.value)


@external
def serve(order_id: uint256, workers: DynArray[address, MAX_EVALUATION_WORKERS], boxes: DynArray[bytes32, MAX_EVALUATION_WORKERS]):
    """
    @notice Say the model is served to the current round: sealed to each
            listed worker's presented key, uploaded under the offer's model
            URI as the file whose keccak256 is the matching box. Only the
            seller, only once the round's roster is full, by `serve_deadline`;
            a round not served by then is evaluated on no model.
    @param order_id The order.
    @param workers The workers served, each with a key presented this round.
    @param boxes keccak256 of each worker's sealed copy, in the same order.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_EVALUATING, "not evaluating"
    assert msg.sender == self._terms[order_id].seller, "only the seller"
    assert p.served == False, "already served"
    deadline: uint256 = self._serve_deadline(order_id, p)
    assert deadline != 0, "roster not full"
    assert block.number <= deadline, "serve window closed"
    assert len(workers) == len(boxes), "one box per worker"
    assert len(workers) > 0, "serve at least one worker"
    for worker: address in workers:
        assert staticcall BOARD.worker_status(p.task_id, worker) != BOARD_NOT_SEATED, "not on the roster"
    p.served = True
    p.exposed = True
    self._save(order_id, p)
    log ModelServed(order_id=order_id, task_id=p.task_id, workers=workers, boxes=boxes)


# ---------------------------------------------------------------- workers


@external
def present_key(order_id: uint256, key: bytes32):
    """
    @notice Name the X25519 public key the seller seals the model to for
            this round. Only a worker on the round's roster, only once it is
            full (the model is never served before), before the seller served.
    @param order_id The order.
    @param key The worker's X25519 public key for this round.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_EVALUATING, "not evaluating"
    assert key != empty(bytes32), "empty key"
    assert self._serve_deadline(order_id, p) != 0, "roster not full"
    assert p.served == False, "already served"
    assert staticcall BOARD.worker_status(p.task_id, msg.sender) != BOARD_NOT_SEATED, "not on the roster"
    log KeyPresented(order_id=order_id, task_id=p.task_id, worker=msg.sender, key=key)


# ---------------------------------------------------------------- anyone


@external
def advance(order_id: uint256):
    """
    @notice Move an evaluation on once its task ended: settle or abort it on
            the board when due; a task that did not agree returns its reward
            and is retried with a fresh task (fresh coin, fresh roster) until
            max_rounds, then the price returns to the buyer. An agreed task
            opens the finalize window; once it closes unfinalized, the price
            returns to the buyer. Anyone may call.
    @param order_id The order.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_EVALUATING, "not evaluating"
    phase: uint8 = staticcall BOARD.phase(p.task_id)
    if phase == BOARD_JOINING or phase == BOARD_AWAITING_COIN:
        assert block.number > staticcall BOARD.deadline(p.task_id), "evaluation still running"
        extcall BOARD.abort(p.task_id)
    elif phase == BOARD_SETTLEABLE:
        extcall BOARD.settle(p.task_id)
    phase = staticcall BOARD.phase(p.task_id)
    assert phase >= BOARD_AGREED, "evaluation still running"

    escrow: uint256 = self._escrow[order_id]
    if phase == BOARD_AGREED:
        if p.agreed_at == 0:
            p.agreed_at = block.number
            self._save(order_id, p)
            log AgreementSeen(order_id=order_id, task_id=p.task_id, finalize_deadline=block.number + p.finalize_blocks)
            return
        assert block.number > p.agreed_at + p.finalize_blocks, "finalize window still open"
        self._close(order_id, p, escrow, 0, STAGE_UNEVALUATED)
        return

    returned: uint256 = staticcall BOARD.owed(p.task_id, self)
    if returned > 0:
        extcall BOARD.claim(p.task_id)
    escrow += returned
    self._escrow[order_id] = escrow
    if phase != BOARD_ABORTED:
        p.filled += 1  # the roster filled: every seat that sabotaged lost at least deposit/2
    log RoundFailed(order_id=order_id, task_id=p.task_id, outcome=phase)
    price_and_reward: uint256 = self._terms[order_id].price + self._terms[order_id].reward
    if p.rounds < p.max_rounds and escrow >= price_and_reward:
        self._publish_round(order_id, p, escrow)
        return
    forfeit: uint256 = 0
    if p.exposed and p.filled < p.max_rounds:
        # The model was served and the order ends unevaluated: each round short of
        # max_rounds filled ones cost a saboteur no deposit, so it costs the refund
        # (price + reward) / max_rounds; the dust stays with the buyer.
        forfeit = min(price_and_reward * (p.max_rounds - p.filled) // p.max_rounds, escrow)
    if p.exposed:
        # A served model whose rounds never agreed: the seller's bond is forfeited too (a seller
        # serving part of a roster made the rounds disagree, and must not get it back).
        self._forfeit_bond(order_id)
    self._close(order_id, p, escrow, forfeit, STAGE_UNEVALUATED)


@external
def finalize(order_id: uint256, bits: Bytes[MAX_BITS]):
    """
    @notice Decide the purchase from the agreed correctness bitstring: the
            seller may claim the price if correct * 10000 >= threshold *
            samples, else the buyer. Anyone may call (the seller or the buyer can both rebuild
            the bitstring: the workers publish it, and the job reruns).
    @param order_id The order.
    @param bits The bitstring's bits, MSB first, zero-padded to whole 32-byte
           words: the encoding's body after magic and count.
    """
    p: Progress = self._load_known(order_id)
    assert p.stage == STAGE_EVALUATING, "not evaluating"
    assert p.agreed_at == 0 or block.number <= p.agreed_at + p.finalize_blocks, "finalize window closed"
    words: uint256 = (p.samples + 255) // 256
    assert len(bits) == words * 32, "wrong bitstring length"
    agreed: bytes32 = staticcall BOARD.result_of(p.task_id)
    assert keccak256(concat(BITS_MAGIC, convert(p.samples, bytes32), bits)) == agreed, "bitstring does not match"

    correct: uint256 = 0
    for i: uint256 in range(MAX_BITS // 32):
        if i == words:
            break
        correct = unsafe_add(correct, self._popcount(convert(extract32(bits, i * 32), uint256)))
    # Count only the first `samples` bits: padding is not a sample.
    padding: uint256 = words * 256 - p.samples
    correct = unsafe_sub(correct, self._popcount(convert(extract32(bits, (words - 1) * 32), uint256) & ((1 << padding) - 1)))

    bought: bool = correct * BPS >= p.threshold * p.samples
    p.stage = STAGE_REFUSED
    if bought:
        p.stage = STAGE_BOUGHT
    else:
        # A refused model's bond is forfeited to the sink, not paid to the buyer: a buyer
        # that could make a round refuse (all n seats its own) must gain nothing by it.
        self._forfeit_bond(order_id)
    self._save(order_id, p)
    log Finalized(order_id=order_id, correct=correct, samples=p.samples, bought=bought)


@external
def cancel(order_id: uint256):
    """
    @notice End an order that never started evaluating, refunding the buyer:
            the buyer may while no offer came; anyone may once the offer
            deadline passed unanswered, or once an offer's release window
            closed without the data (the seller served nothing yet).
    @param order_id The order.
    """
    p: Progress = self._load_known(order_id)
    stage: uint256 = STAGE_CANCELLED
    if p.stage == STAGE_OPEN:
        if msg.sender != self._terms[order_id].buyer:
            assert block.number > self._terms[order_id].offer_deadline, "offer window still open"
    elif p.stage == STAGE_OFFERED:
        assert block.number > self._terms[order_id].step_start + self._terms[order_id].release_blocks, "release window still open"
        stage = STAGE_LAPSED
    else:
        raise "evaluation already started"
    self._close(order_id, p, self._escrow[order_id], 0, stage)


@external
@nonreentrant
def claim(order_id: uint256):
    """
    @notice Pay what the order owes the caller: once it ended, its escrow to
            the seller of a bought model, else to the buyer (price, and the
            reward if it came back); the offer's bond, unless forfeited, to
            the seller; at any time, a declined offer's bond to its seller.
    @param order_id The order.
    """
    p: Progress = self._load_known(order_id)
    amount: uint256 = self._declined[order_id][msg.sender]
    self._declined[order_id][msg.sender] = 0
    if p.stage >= STAGE_BOUGHT:
        if msg.sender == self._payee(order_id, p):
            amount += self._escrow[order_id]
            self._escrow[order_id] = 0
        if msg.sender == self._bond_payee(order_id, p):
            amount += self._bond[order_id]
            self._bond[order_id] = 0
    assert amount > 0, "nothing to claim"
    raw_call(msg.sender, b"", value=amount)
    log Claimed(order_id=order_id, account=msg.sender, amount=amount)


@external
@nonreentrant
def sweep():
    """
    @notice Pay the forfeits collected so far to the board's forfeit sink.
            Anyone may call.
    """
    amount: uint256 = self.forfeited
    assert amount > 0, "nothing to sweep"
    self.forfeited = 0
    sink: address = staticcall BOARD.FORFEIT_SINK()
    raw_call(sink, b"", value=amount)
    log Swept(sink=sink, amount=amount)


@external
@payable
def __default__():
    """
    @notice Receives evaluation rewards the board returns; refuses other ether,
            which no order would own.
    """
    assert msg.sender == BOARD.address, "only the board pays in"


# ---------------------------------------------------------------- views


@view
@external
def order(order_id: uint256) -> Order:
    """
    @notice An order's terms and progress (all zero for an unknown id).
    @param order_id The order.
    @return The order.
    """
    t: Terms = self._terms[order_id]
    p: Progress = self._load(order_id)
    return Order(
        buyer=t.buyer,
        seller=t.seller,
        stage=p.stage,
        price=t.price,
        reward=t.reward,
        escrow=self._escrow[order_id],
        threshold=p.threshold,
        samples=p.samples,
        test_data=t.test_data,
        template=t.template,
        workers=t.workers,
        deposit=t.deposit,
        join_blocks=t.join_blocks,
        commit_blocks=t.commit_blocks,
        reveal_blocks=t.reveal_blocks,
        max_rounds=p.max_rounds,
        rounds=p.rounds,
        offer_deadline=t.offer_deadline,
        release_blocks=t.release_blocks,
        finalize_blocks=p.finalize_blocks,
        model=t.model,
        spec=t.spec,
        step_start=t.step_start,
        agreed_at=p.agreed_at,
        task_id=p.task_id,
        offer_bond=t.offer_bond,
        bond=self._bond[order_id],
        filled=p.filled,
        served=p.served,
        exposed=p.exposed,
    )


@view
@external
def owed(order_id: uint256, account: address) -> uint256:
    """
    @notice What `claim` would pay `account` now (0 before the order ends).
    @param order_id The order.
    @param account The buyer, the seller, or anyone.
    @return Wei owed.
    """
    p: Progress = self._load(order_id)
    amount: uint256 = self._declined[order_id][account]
    if p.stage >= STAGE_BOUGHT:
        if account == self._payee(order_id, p):
            amount += self._escrow[order_id]
        if account == self._bond_payee(order_id, p):
            amount += self._bond[order_id]
    return amount


@view
@external
def serve_deadline(order_id: uint256) -> uint256:
    """
    @notice The last block the seller may serve the current round in: the
            first half of its commit window (0 unless the round's roster is
            full and its commit window open). Workers that see no
            ModelServed by then evaluate no model.
    @param order_id The order.
    @return A block number, or 0.
    """
    p: Progress = self._load(order_id)
    if p.stage != STAGE_EVALUATING:
        return 0
    return self._serve_deadline(order_id, p)


@pure
@external
def spec_digest(template_head: Bytes[MAX_HEAD], model: bytes32, model_uri: String[MAX_URI], template_tail: Bytes[MAX_TAIL]) -> bytes32:
    """
    @notice The evaluation spec digest an offer of `model` at `model_uri` gets.
    @param template_head The order's template head.
    @param model keccak256 of the model file.
    @param model_uri Where workers fetch it.
    @param template_tail The order's template tail.
    @return keccak256 of the filled-in spec JSON.
    """
    return keccak256(concat(template_head, self._hex(model), MODEL_URI_KEY, convert(model_uri, Bytes[MAX_URI]), template_tail))


@pure
@external
def popcount(word: uint256) -> uint256:
    """
    @notice Number of set bits in `word`.
    @param word Any 256-bit word.
    @return 0..256.
    """
    return self._popcount(word)


# ---------------------------------------------------------------- internals


@view
@internal
def _load(order_id: uint256) -> Progress:
    word: uint256 = self._progress[order_id]
    return Progress(
        stage=word & BITS_8,
        rounds=(word >> AT_ROUNDS) & BITS_8,
        max_rounds=(word >> AT_MAX_ROUNDS) & BITS_8,
        threshold=(word >> AT_THRESHOLD) & BITS_16,
        samples=(word >> AT_SAMPLES) & BITS_16,
        finalize_blocks=(word >> AT_FINALIZE_BLOCKS) & BITS_24,
        agreed_at=(word >> AT_AGREED_AT) & BITS_40,
        task_id=(word >> AT_TASK_ID) & BITS_64,
        filled=(word >> AT_FILLED) & BITS_8,
        served=(word >> AT_SERVED) & 1 == 1,
        exposed=(word >> AT_EXPOSED) & 1 == 1,
    )


@view
@internal
def _load_known(order_id: uint256) -> Progress:
    p: Progress = self._load(order_id)
    assert p.stage != STAGE_NONE, "unknown order"
    return p


@internal
def _save(order_id: uint256, p: Progress):
    # Every field fits its width: open_order bounds rounds, threshold, samples
    # and windows; block numbers and board task ids stay far below 2**40.
    self._progress[order_id] = (
        p.stage
        | (p.rounds << AT_ROUNDS)
        | (p.max_rounds << AT_MAX_ROUNDS)
        | (p.threshold << AT_THRESHOLD)
        | (p.samples << AT_SAMPLES)
        | (p.finalize_blocks << AT_FINALIZE_BLOCKS)
        | (p.agreed_at << AT_AGREED_AT)
        | (p.task_id << AT_TASK_ID)
        | (p.filled << AT_FILLED)
        | (convert(p.served, uint256) << AT_SERVED)
        | (convert(p.exposed, uint256) << AT_EXPOSED)
    )


@internal
def _publish_round(order_id: uint256, p: Progress, escrow: uint256):
    # The board takes its coin from the chain when the roster fills: a
    # contract cannot keep a coin secret, and nobody may know it at publish.
    t: Terms = self._terms[order_id]
    task_id: uint256 = extcall BOARD.publish(
        t.spec, t.test_data, t.workers, t.deposit, t.join_blocks, t.commit_blocks, t.reveal_blocks,
        empty(bytes32), [], concat(ORDER_URI_SCHEME, uint2str(order_id)), value=t.reward
    )
    self._escrow[order_id] = escrow - t.reward
    p.rounds += 1
    p.task_id = task_id
    p.agreed_at = 0
    p.served = False
    self._save(order_id, p)
    log RoundPublished(order_id=order_id, round=p.rounds, task_id=task_id)


@internal
def _close(order_id: uint256, p: Progress, escrow: uint256, forfeit: uint256, stage: uint256):
    # The escrow, less the forfeit, stays for the buyer to claim.
    if forfeit > 0:
        self._escrow[order_id] = escrow - forfeit
        self.forfeited += forfeit
    p.stage = stage
    self._save(order_id, p)
    log Closed(order_id=order_id, stage=stage, refund=escrow - forfeit, forfeited=forfeit)


@view
@internal
def _serve_deadline(order_id: uint256, p: Progress) -> uint256:
    # The first half of the round's commit window, once its roster is full.
    if staticcall BOARD.phase(p.task_id) != BOARD_COMMIT:
        return 0
    return staticcall BOARD.deadline(p.task_id) - self._terms[order_id].commit_blocks // 2


@view
@internal
def _payee(order_id: uint256, p: Progress) -> address:
    if p.stage == STAGE_BOUGHT:
        return self._terms[order_id].seller
    return self._terms[order_id].buyer


@view
@internal
def _bond_payee(order_id: uint256, p: Progress) -> address:
    # The bond left once the order ended (a refused or unevaluated served model's was
    # forfeited) goes back to its seller.
    return self._terms[order_id].seller


@internal
def _forfeit_bond(order_id: uint256):
    bond: uint256 = self._bond[order_id]
    if bond > 0:
        self._bond[order_id] = 0
        self.forfeited += bond


@pure
@internal
def _popcount(word: uint256) -> uint256:
    # SWAR: sum bits in pairs, nibbles, bytes, 16-bit lanes; one multiply adds
    # the 16 lanes into the top lane (256 fits 16 bits, not 8).
    x: uint256 = unsafe_sub(word, (word >> 1) & M1)
    x = unsafe_add(x & M2, (x >> 2) & M2)
    x = unsafe_add(x, x >> 4) & M4
    x = unsafe_add(x, x >> 8) & M8
    return unsafe_mul(x, H16) >> 240


@pure
@internal
def _hex(digest: bytes32) -> Bytes[64]:
    # Lower-case hex, as the spec's canonical JSON writes digests.
    x: uint256 = convert(digest, uint256)
    high: uint256 = 0
    low: uint256 = 0
    for j: uint256 in range(64):
        nibble: uint256 = (x >> (4 * j)) & 15
        char: uint256 = nibble + 48
        if nibble > 9:
            char = nibble + 87
        if j < 32:
            low |= char << (8 * j)
        else:
            high |= char << (8 * (j - 32))
    return concat(convert(high, bytes32), convert(low, bytes32))


@pure
@internal
def _check_uri(uri: Bytes[MAX_URI]):
    assert len(uri) > 0, "empty model URI"
    for i: uint256 in range(MAX_URI):
        if i == len(uri):
            break
        char: uint256 = convert(convert(slice(uri, i, 1), bytes1), uint256)
        assert char > 32 and char < 127 and char != 34 and char != 92, "model URI needs escaping"
