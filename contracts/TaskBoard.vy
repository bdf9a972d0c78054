# pragma version ~=0.4.3
"""
@title crowdml task board
@license Apache-2.0
@notice One board holds many crowdsourced ML tasks. Each task runs the protocol
        of Lu, Tang and Wang (ICDMW 2018): a requester escrows a reward and names
        a job (spec digest) and its data (data digest); n workers each lock a
        deposit; a random coin is fixed; every worker commits to its result and
        then opens the commitment; the board pays by the paper's clauses, which
        make "everyone reports the true result" the only strategy profile that
        survives iterated elimination of weakly dominated strategies, even for
        coalitions of up to n - 1 workers.
@dev What this board deliberately does not do: it never learns or judges a
     result beyond equality and membership in the common-knowledge set E_ck;
     it never loops over workers (every call is O(1) in n); it never pushes
     ether to anyone but the caller of `claim` (pull payments) or, via
     `sweep`, the immutable forfeit sink.

     Gas: the fields every call needs (phase, counters, windows, the block the
     phase began, the deposit) are packed by hand into one storage word per
     task, `_progress`, loaded once and stored once per call. A board that
     keeps them in separate slots pays a cold SLOAD per field and misses the
     per-worker budget measured by bench/gas.py. `publish` also writes a
     placeholder into the two slots that single workers fill later (the coin
     and the first result), so that those workers overwrite a nonzero word
     (5,000 gas) instead of creating one (22,100): the requester pays.

     Randomness: the coin is fixed by the join that fills the roster, which
     may not land in the publish block, from the hash of the block before it
     (the publish block or a later one) and prevrandao. That block hash did not
     exist when the requester named E_ck, so the coin is unknowable at publish
     on every EVM chain, also where prevrandao is a constant.
"""

import ITaskBoard

implements: ITaskBoard



# @dev Packed per-task working state, unpacked into memory by `_load_known`
#      (`_load` for the views) and written back by `_save`. Field widths are
#      listed in the layout constants.
struct Progress:
    stage: uint256
    workers: uint256
    joined: uint256
    committed: uint256
    opened: uint256
    valid: uint256
    mismatch: bool
    requester_paid: bool
    coin_committed: bool
    join_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    stage_start: uint256
    deposit: uint256


# @dev Everything a watcher or another contract needs to know about a task.
struct TaskView:
    requester: address
    spec: bytes32
    data: bytes32
    reward: uint256
    deposit: uint256
    workers: uint256
    join_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    coin_hash: bytes32
    phase: uint8
    deadline: uint256
    joined: uint256
    committed: uint256
    revealed: uint256
    valid: uint256


# @dev A requester published a task and escrowed `reward`.
event Published:
    task_id: indexed(uint256)
    requester: indexed(address)
    spec: bytes32
    data: bytes32
    reward: uint256
    deposit: uint256
    workers: uint256
    join_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    coin_hash: bytes32
    trivial: DynArray[bytes32, MAX_TRIVIAL]
    spec_uri: String[MAX_SPEC_URI]


# Events carry what a watcher cannot read from the `task` view (counters and
# deadlines are there): each data word costs the worker who emits it 256 gas.

# @dev A worker locked its deposit.
event Joined:
    task_id: indexed(uint256)
    worker: indexed(address)


# @dev The coin is fixed and the commit window is open.
event CoinFixed:
    task_id: indexed(uint256)
    coin: bytes32


# @dev A worker committed.
event Committed:
    task_id: indexed(uint256)
    worker: indexed(address)
    commitment: bytes32


# @dev A worker opened its commitment; `trivial` results count as failures.
event Revealed:
    task_id: indexed(uint256)
    worker: indexed(address)
    result: bytes32
    trivial: bool


# @dev The outcome is fixed; `result` is the agreed result (empty unless AGREED).
event Settled:
    task_id: indexed(uint256)
    outcome: uint8
    result: bytes32
    valid: uint256
    forfeited: uint256


# @dev `account` withdrew `amount` wei owed to it by the task's outcome.
event Claimed:
    task_id: indexed(uint256)
    account: indexed(address)
    amount: uint256


# @dev The task ended before work began; `outcome` is ABORTED or COIN_WITHHELD.
event Aborted:
    task_id: indexed(uint256)
    caller: indexed(address)
    outcome: uint8


# @dev A worker of a settled task says where it uploaded the agreed result, or
#      its transcript for a disagreed one (sealed to the requester's key when the
#      spec names one); the board cannot check the bytes there, the reader checks
#      a result against `result_of`.
event Announced:
    task_id: indexed(uint256)
    worker: indexed(address)
    uri: String[MAX_SPEC_URI]


# @dev Forfeited deposits were paid out to the forfeit sink.
event Swept:
    sink: indexed(address)
    amount: uint256


# Phases. Stored stages are 1, 2, 3 and the outcomes 6..10; the `phase` view
# splits the stored WORKING stage (3) into COMMIT, REVEAL and SETTLEABLE.
PHASE_NONE: constant(uint8) = 0
PHASE_JOINING: constant(uint8) = 1
PHASE_AWAITING_COIN: constant(uint8) = 2
PHASE_COMMIT: constant(uint8) = 3
PHASE_REVEAL: constant(uint8) = 4
PHASE_SETTLEABLE: constant(uint8) = 5
OUTCOME_AGREED: constant(uint8) = 6
OUTCOME_DISAGREED: constant(uint8) = 7
OUTCOME_FAILED: constant(uint8) = 8
OUTCOME_ABORTED: constant(uint8) = 9
OUTCOME_COIN_WITHHELD: constant(uint8) = 10
STAGE_WORKING: constant(uint8) = PHASE_COMMIT

# A worker's seat holds a small marker, or its commitment while committed.
# Commitments at or below MAX_MARKER are refused, so the two never collide.
SEAT_EMPTY: constant(uint256) = 0
SEAT_JOINED: constant(uint256) = 1
SEAT_REVEALED: constant(uint256) = 2
SEAT_TRIVIAL: constant(uint256) = 3
MAX_MARKER: constant(uint256) = 15

# Worker statuses returned by `worker_status` (a seat holding a commitment reads
# COMMITTED). `claim` empties the seat, for the storage refund: a worker that
# was paid reads NONE again.
STATUS_NONE: constant(uint8) = 0
STATUS_JOINED: constant(uint8) = 1
STATUS_COMMITTED: constant(uint8) = 2
STATUS_REVEALED: constant(uint8) = 3
STATUS_TRIVIAL: constant(uint8) = 4

MIN_WORKERS: constant(uint256) = 2
MAX_WORKERS: constant(uint256) = 1024
MAX_TRIVIAL: constant(uint256) = 16
MAX_SPEC_URI: constant(uint256) = 512
MAX_WINDOW: constant(uint256) = 2**24 - 1
MAX_DEPOSIT: constant(uint256) = 2**80 - 1
MAX_REWARD: constant(uint256) = 2**96 - 1
# The last block at which a phase may start: the packed word keeps it in 40 bits.
MAX_BLOCK: constant(uint256) = 2**40 - 1
# Written at publish into the slots a single worker fills later (see the header).
PREPAID: constant(bytes32) = 0x0000000000000000000000000000000000000000000000000000000000000001

# Bit layout of `_progress` (offset, width):
# 4 + 5*11 + 3*1 + 3*24 + 40 + 80 = 254 bits. Counters are at most MAX_WORKERS < 2**11.
AT_STAGE: constant(uint256) = 0
AT_WORKERS: constant(uint256) = 4
AT_JOINED: constant(uint256) = 15
AT_COMMITTED: constant(uint256) = 26
AT_OPENED: constant(uint256) = 37
AT_VALID: constant(uint256) = 48
AT_MISMATCH: constant(uint256) = 59
AT_REQUESTER_PAID: constant(uint256) = 60
AT_COIN_COMMITTED: constant(uint256) = 61
AT_JOIN_BLOCKS: constant(uint256) = 62
AT_COMMIT_BLOCKS: constant(uint256) = 86
AT_REVEAL_BLOCKS: constant(uint256) = 110
AT_STAGE_START: constant(uint256) = 134
AT_DEPOSIT: constant(uint256) = 174
BITS_1: constant(uint256) = 1
BITS_4: constant(uint256) = 2**4 - 1
BITS_11: constant(uint256) = 2**11 - 1
BITS_24: constant(uint256) = 2**24 - 1
BITS_40: constant(uint256) = 2**40 - 1
BITS_80: constant(uint256) = 2**80 - 1
BITS_160: constant(uint256) = 2**160 - 1


# @dev Where forfeited deposits go. Never the requester nor a worker of the
#      task: a requester that joined its own task with a junk result would
#      otherwise profit from the honest workers' lost halves, and a worker
#      paid from others' forfeits could gain by sabotaging them.
FORFEIT_SINK: public(immutable(address))

# @dev The block that deployed the board: where a scan for its events starts,
#      read from the chain itself rather than from an explorer or a trace API.
CREATED_AT: public(immutable(uint256))

# @dev Number of tasks published; task ids run 1..task_count. Written by `publish`.
task_count: public(uint256)

# @dev Forfeited wei not yet swept to FORFEIT_SINK. Written by `settle` and `sweep`.
forfeited: public(uint256)

# @dev Packed `Progress` per task. Written by every state-changing call.
_progress: HashMap[uint256, uint256]

# @dev Requester (low 160 bits) and reward (high 96 bits) per task, one word
#      for `claim`. Written by `publish`.
_funding: HashMap[uint256, uint256]

# @dev Job spec and data digests per task. Written by `publish`.
_spec: HashMap[uint256, bytes32]
_data: HashMap[uint256, bytes32]

# @dev keccak256(abi_encode(coin, salt)) committed by the requester, or empty
#      for a chain coin. Written by `publish`.
_coin_hash: HashMap[uint256, bytes32]

# @dev The task's coin once fixed; before, PREPAID, then (requester coin) the
#      chain's seed to mix with it. Written by `publish`, the filling `join`
#      and `release_coin`.
_coin: HashMap[uint256, bytes32]

# @dev E_ck membership: the spec and data digests and the requester's list.
#      Written by `publish`; the empty digest is checked in code.
_trivial: HashMap[uint256, HashMap[bytes32, bool]]

# @dev First non-trivial result revealed; the agreed result if all match.
#      PREPAID until then. Written by `publish` and the first valid `reveal`.
_first_result: HashMap[uint256, bytes32]

# @dev A worker's seat: SEAT_* marker or its commitment. Written by `join`,
#      `commit`, `reveal`, and emptied by `claim`.
_seats: HashMap[uint256, HashMap[address, uint256]]


@deploy
def __init__(forfeit_sink: address):
    """
    @param forfeit_sink Receives forfeited deposits; it may neither publish nor join.
    """
    assert forfeit_sink != empty(address), "sink is the zero address"
    FORFEIT_SINK = forfeit_sink
    CREATED_AT = block.number


# ---------------------------------------------------------------- publish


@external
@payable
def publish(
    spec: bytes32,
    data: bytes32,
    workers: uint256,
    deposit: uint256,
    join_blocks: uint256,
    commit_blocks: uint256,
    reveal_blocks: uint256,
    coin_hash: bytes32,
    trivial: DynArray[bytes32, MAX_TRIVIAL],
    spec_uri: String[MAX_SPEC_URI] = "",
) -> uint256:
    """
    @notice Publish a task and escrow `msg.value` as its reward.
    @param spec keccak256 of the job spec's canonical JSON; not empty.
    @param data keccak256 of the input data file; not empty.
    @param workers Number of workers n (at least 2).
    @param deposit Wei each worker locks; even, so halves are exact.
    @param join_blocks Blocks to fill the roster, and for the requester's coin after it fills.
    @param commit_blocks Blocks to commit after the coin is fixed.
    @param reveal_blocks Blocks to reveal after the commit window closes;
           reveals may start as soon as every worker committed.
    @param coin_hash keccak256(abi_encode(coin, salt)) of the requester's coin,
           or empty to take the coin from the chain when the roster fills.
    @param trivial Extra common-knowledge wrong results (E_ck) to treat as failures.
    @param spec_uri Where workers fetch the spec (any URL; they check it against `spec`).
           Logged in Published only, not stored: a worker reads it from the event.
    @return The new task id.
    """
    assert msg.sender != FORFEIT_SINK, "the sink cannot take part"
    assert spec != empty(bytes32), "spec digest is empty"
    assert data != empty(bytes32), "data digest is empty"
    assert msg.value > 0, "reward must be positive"
    assert msg.value <= MAX_REWARD, "reward too large"
    assert workers >= MIN_WORKERS, "need at least 2 workers"
    assert workers <= MAX_WORKERS, "too many workers"
    assert deposit > 0, "deposit must be positive"
    assert deposit % 2 == 0, "deposit must be even"
    assert deposit <= MAX_DEPOSIT, "deposit too large"
    assert join_blocks > 0 and commit_blocks > 0 and reveal_blocks > 0, "windows must be positive"
    assert join_blocks <= MAX_WINDOW and commit_blocks <= MAX_WINDOW and reveal_blocks <= MAX_WINDOW, "window too long"

    task_id: uint256 = self.task_count + 1
    self.task_count = task_id
    self._funding[task_id] = convert(msg.sender, uint256) | (msg.value << 160)
    self._spec[task_id] = spec
    self._data[task_id] = data
    if coin_hash != empty(bytes32):
        self._coin_hash[task_id] = coin_hash
    self._coin[task_id] = PREPAID
    self._first_result[task_id] = PREPAID
    self._trivial[task_id][spec] = True
    self._trivial[task_id][data] = True
    for digest: bytes32 in trivial:
        self._trivial[task_id][digest] = True

    p: Progress = empty(Progress)
    p.stage = convert(PHASE_JOINING, uint256)
    p.workers = workers
    p.coin_committed = coin_hash != empty(bytes32)
    p.join_blocks = join_blocks
    p.commit_blocks = commit_blocks
    p.reveal_blocks = reveal_blocks
    p.stage_start = self._phase_start()
    p.deposit = deposit
    self._save(task_id, p)

    log Published(
        task_id=task_id,
        requester=msg.sender,
        spec=spec,
        data=data,
        reward=msg.value,
        deposit=deposit,
        workers=workers,
        join_blocks=join_blocks,
        commit_blocks=commit_blocks,
        reveal_blocks=reveal_blocks,
        coin_hash=coin_hash,
        trivial=trivial,
        spec_uri=spec_uri,
    )
    return task_id


# ---------------------------------------------------------------- prepare


@external
@payable
def join(task_id: uint256):
    """
    @notice Take a seat on the task's roster by locking exactly its deposit.
    @dev The join that fills the roster draws the chain's seed: the hash of
         the block before it, mixed with prevrandao and the task id. A roster
         may not fill in the publish block, so that block hash is of the
         publish block or a later one, which did not exist when the requester
         signed E_ck: nobody can know the seed at publish, on any EVM chain.
         It can still be biased: by the proposer of the hashed block, and by a
         filling worker that times its join (where prevrandao is a constant,
         it sees the seed before joining). The seed is the coin when the
         requester committed none; otherwise it is mixed with the requester's.
    @param task_id The task to join.
    """
    p: Progress = self._load_known(task_id)
    assert p.stage == convert(PHASE_JOINING, uint256), "not open for joining"
    assert block.number <= p.stage_start + p.join_blocks, "join window closed"
    assert msg.sender != FORFEIT_SINK, "the sink cannot take part"
    assert msg.value == p.deposit, "wrong deposit"
    assert self._seats[task_id][msg.sender] == SEAT_EMPTY, "already joined"

    self._seats[task_id][msg.sender] = SEAT_JOINED
    p.joined += 1
    log Joined(task_id=task_id, worker=msg.sender)

    if p.joined == p.workers:
        assert block.number > p.stage_start, "roster cannot fill in the publish block"
        seed: bytes32 = keccak256(abi_encode(blockhash(block.number - 1), block.prevrandao, task_id))
        p.stage_start = self._phase_start()
        if p.coin_committed:
            p.stage = convert(PHASE_AWAITING_COIN, uint256)
            self._coin[task_id] = seed
        else:
            p.stage = convert(STAGE_WORKING, uint256)
            self._fix_coin(task_id, seed)
    self._save(task_id, p)


@external
def release_coin(task_id: uint256, coin: bytes32, salt: bytes32):
    """
    @notice Open the requester's coin commitment; starts the commit window.
    @dev The task's coin is the requester's mixed with the seed the filling
         join drew. The requester alone knows its coin at publish, when it also
         names E_ck: unmixed, it could list the true result as trivial and take
         the work while every honest worker forfeits. Mixed, the coin is
         unknown at publish. Once the roster is full the requester knows the
         coin; it can only release it or withhold it and pay the workers.
    @param task_id The task whose roster is full.
    @param coin The coin committed at publish.
    @param salt The salt committed with it.
    """
    p: Progress = self._load_known(task_id)
    assert p.stage == convert(PHASE_AWAITING_COIN, uint256), "not awaiting the coin"
    assert msg.sender == self._requester(task_id), "only the requester"
    assert block.number <= p.stage_start + p.join_blocks, "coin window closed"
    assert keccak256(abi_encode(coin, salt)) == self._coin_hash[task_id], "coin does not match"

    p.stage = convert(STAGE_WORKING, uint256)
    p.stage_start = self._phase_start()
    mixed: bytes32 = keccak256(abi_encode(coin, self._coin[task_id]))
    self._fix_coin(task_id, mixed)
    self._save(task_id, p)


@external
def abort(task_id: uint256):
    """
    @notice End a task before work begins. The requester may abort while the
            roster is short; anyone may once the join window closed short, or
            once the requester's coin window closed unreleased, which pays
            the workers their share of the reward (COIN_WITHHELD). A task that
            already ended is left as it is (a racing abort does nothing).
    @param task_id The task to abort.
    """
    p: Progress = self._load_known(task_id)
    if p.stage >= convert(OUTCOME_AGREED, uint256):
        return
    outcome: uint8 = OUTCOME_ABORTED
    if p.stage == convert(PHASE_JOINING, uint256):
        if msg.sender != self._requester(task_id):
            assert block.number > p.stage_start + p.join_blocks, "join window still open"
    elif p.stage == convert(PHASE_AWAITING_COIN, uint256):
        assert block.number > p.stage_start + p.join_blocks, "coin window still open"
        outcome = OUTCOME_COIN_WITHHELD
    else:
        raise "cannot abort after work began"

    p.stage = convert(outcome, uint256)
    self._save(task_id, p)
    log Aborted(task_id=task_id, caller=msg.sender, outcome=outcome)


# ---------------------------------------------------------------- commit


@external
def commit(task_id: uint256, commitment: bytes32):
    """
    @notice Commit to a result within the commit window.
    @param task_id The task.
    @param commitment keccak256(abi_encode(result, salt, worker, task_id)),
           computed off chain: binding the worker and task makes a copied
           commitment impossible to open.
    """
    p: Progress = self._load_known(task_id)
    assert p.stage >= convert(STAGE_WORKING, uint256), "coin not fixed"
    assert p.stage == convert(STAGE_WORKING, uint256), "task ended"
    assert block.number <= p.stage_start + p.commit_blocks, "commit window closed"
    seat: uint256 = self._seats[task_id][msg.sender]
    assert seat != SEAT_EMPTY, "not a worker"
    assert seat == SEAT_JOINED, "already committed"
    assert convert(commitment, uint256) > MAX_MARKER, "reserved commitment"

    self._seats[task_id][msg.sender] = convert(commitment, uint256)
    p.committed += 1
    self._save(task_id, p)
    log Committed(task_id=task_id, worker=msg.sender, commitment=commitment)


# ---------------------------------------------------------------- reveal


@external
def reveal(task_id: uint256, result: bytes32, salt: bytes32):
    """
    @notice Open a commitment. A wrong opening reverts and may be retried
            until the deadline; a result in E_ck is recorded as a failure.
    @param task_id The task.
    @param result The 32-byte result digest committed to.
    @param salt The salt committed with it.
    """
    p: Progress = self._load_known(task_id)
    assert p.stage >= convert(STAGE_WORKING, uint256), "reveal phase not open"
    assert p.stage == convert(STAGE_WORKING, uint256), "task ended"
    commit_deadline: uint256 = p.stage_start + p.commit_blocks
    assert self._reveal_open(p.committed, p.workers, commit_deadline), "reveal phase not open"
    assert block.number <= self._reveal_deadline(commit_deadline, p.reveal_blocks), "reveal window closed"
    seat: uint256 = self._seats[task_id][msg.sender]
    assert seat != SEAT_EMPTY, "not a worker"
    assert seat != SEAT_JOINED, "nothing committed"
    assert seat > MAX_MARKER, "already revealed"
    assert convert(keccak256(abi_encode(result, salt, msg.sender, task_id)), uint256) == seat, "commitment mismatch"

    p.opened += 1
    # A result equal to the first valid one is known not to be trivial, which
    # spares agreeing workers the E_ck lookup.
    first: bytes32 = empty(bytes32)
    if p.valid > 0:
        first = self._first_result[task_id]
    trivial: bool = False
    if p.valid == 0 or result != first:
        trivial = result == empty(bytes32) or self._trivial[task_id][result]
    if trivial:
        self._seats[task_id][msg.sender] = SEAT_TRIVIAL
    else:
        self._seats[task_id][msg.sender] = SEAT_REVEALED
        p.valid += 1
        if p.valid == 1:
            self._first_result[task_id] = result
        elif result != first:
            p.mismatch = True
    self._save(task_id, p)
    log Revealed(task_id=task_id, worker=msg.sender, result=result, trivial=trivial)


# ---------------------------------------------------------------- reward


@external
def settle(task_id: uint256):
    """
    @notice Fix the outcome once every committed worker revealed or the
            reveal window closed. Anyone may call; O(1) in the number of workers.
            A task that already ended is left as it is: when several parties
            race to settle, the later calls do nothing rather than fail.
    @param task_id The task.
    """
    p: Progress = self._load_known(task_id)
    if p.stage >= convert(OUTCOME_AGREED, uint256):
        return
    assert p.stage == convert(STAGE_WORKING, uint256), "not settleable"
    commit_deadline: uint256 = p.stage_start + p.commit_blocks
    assert self._reveal_open(p.committed, p.workers, commit_deadline), "commit window still open"
    assert p.opened == p.committed or block.number > self._reveal_deadline(commit_deadline, p.reveal_blocks), "reveals still pending"

    deposit: uint256 = p.deposit
    outcome: uint8 = OUTCOME_FAILED
    # Paper §VI: any failure costs the failed workers d and the others d/2;
    # otherwise unequal results cost everyone d/2.
    forfeit: uint256 = p.workers * deposit - p.valid * (deposit // 2)
    if p.valid == p.workers:
        if p.mismatch:
            outcome = OUTCOME_DISAGREED
            forfeit = p.workers * (deposit // 2)
        else:
            outcome = OUTCOME_AGREED
            forfeit = 0
    p.stage = convert(outcome, uint256)
    self._save(task_id, p)
    self.forfeited += forfeit

    result: bytes32 = empty(bytes32)
    if outcome == OUTCOME_AGREED:
        result = self._first_result[task_id]
    log Settled(task_id=task_id, outcome=outcome, result=result, valid=p.valid, forfeited=forfeit)


@external
@nonreentrant
def claim(task_id: uint256):
    """
    @notice Withdraw what the task's outcome owes the caller, as a worker,
            as the requester, or both. Each share is paid once.
    @param task_id A settled or aborted task.
    """
    p: Progress = self._load_known(task_id)
    assert p.stage >= convert(OUTCOME_AGREED, uint256), "not settled"
    funding: uint256 = self._funding[task_id]
    reward: uint256 = funding >> 160

    amount: uint256 = 0
    seat: uint256 = self._seats[task_id][msg.sender]
    if seat != SEAT_EMPTY:
        amount = self._worker_share(p.stage, p.workers, p.deposit, seat, reward)
        if amount > 0:
            self._seats[task_id][msg.sender] = SEAT_EMPTY
    if not p.requester_paid and msg.sender == convert(funding & BITS_160, address):
        share: uint256 = self._requester_share(p.stage, p.workers, reward)
        if share > 0:
            amount += share
            p.requester_paid = True
            self._save(task_id, p)
    assert amount > 0, "nothing to claim"

    raw_call(msg.sender, b"", value=amount)
    log Claimed(task_id=task_id, account=msg.sender, amount=amount)


@external
def announce(task_id: uint256, uri: String[MAX_SPEC_URI]):
    """
    @notice Say where this worker uploaded the agreed result or, for a
            disagreed task, its own run's transcript (never its result: the
            requester was refunded). Only a worker that revealed a valid result
            may, before it claims (claiming empties its seat); for an agreed
            task one announcement by any of them is enough.
    @param task_id An AGREED or DISAGREED task.
    @param uri Where the worker uploaded it, for the requester to read.
    """
    stage: uint256 = self._progress[task_id] & BITS_4
    assert stage == convert(OUTCOME_AGREED, uint256) or stage == convert(OUTCOME_DISAGREED, uint256), "not agreed or disagreed"
    assert self._seats[task_id][msg.sender] == SEAT_REVEALED, "not a revealed worker"
    assert len(uri) > 0, "empty uri"
    log Announced(task_id=task_id, worker=msg.sender, uri=uri)


@external
@nonreentrant
def sweep():
    """
    @notice Pay the forfeited deposits collected so far to FORFEIT_SINK. Anyone may call.
    """
    amount: uint256 = self.forfeited
    assert amount > 0, "nothing to sweep"
    self.forfeited = 0
    raw_call(FORFEIT_SINK, b"", value=amount)
    log Swept(sink=FORFEIT_SINK, amount=amount)


# ---------------------------------------------------------------- views


@view
@external
def task(task_id: uint256) -> TaskView:
    """
    @notice The task's terms and progress.
    @param task_id The task.
    @return The task's terms, phase, current deadline and counters.
    """
    p: Progress = self._load(task_id)
    return TaskView(
        requester=self._requester(task_id),
        spec=self._spec[task_id],
        data=self._data[task_id],
        reward=self._funding[task_id] >> 160,
        deposit=p.deposit,
        workers=p.workers,
        join_blocks=p.join_blocks,
        commit_blocks=p.commit_blocks,
        reveal_blocks=p.reveal_blocks,
        coin_hash=self._coin_hash[task_id],
        phase=self._phase(p),
        deadline=self._deadline(p),
        joined=p.joined,
        committed=p.committed,
        revealed=p.opened,
        valid=p.valid,
    )


@view
@external
def phase(task_id: uint256) -> uint8:
    """
    @notice The task's phase: 0 none, 1 joining, 2 awaiting coin, 3 commit,
            4 reveal, 5 settleable, 6 agreed, 7 disagreed, 8 failed,
            9 aborted, 10 coin withheld.
    @param task_id The task.
    @return The phase number.
    """
    return self._phase(self._load(task_id))


@view
@external
def deadline(task_id: uint256) -> uint256:
    """
    @notice The last block of the current phase's window (0 once ended). The
            reveal window always ends `reveal_blocks` after the commit window,
            even when every worker committed early.
    @param task_id The task.
    @return A block number.
    """
    return self._deadline(self._load(task_id))


@view
@external
def worker_status(task_id: uint256, worker: address) -> uint8:
    """
    @notice A worker's status: 0 none (or paid out), 1 joined, 2 committed,
            3 revealed, 4 revealed a trivial result.
    @param task_id The task.
    @param worker The worker's address.
    @return The status number.
    """
    seat: uint256 = self._seats[task_id][worker]
    if seat > MAX_MARKER:
        return STATUS_COMMITTED
    if seat == SEAT_JOINED:
        return STATUS_JOINED
    if seat == SEAT_REVEALED:
        return STATUS_REVEALED
    if seat == SEAT_TRIVIAL:
        return STATUS_TRIVIAL
    return STATUS_NONE


@view
@external
def coin_of(task_id: uint256) -> bytes32:
    """
    @notice The task's coin; reverts until it is fixed.
    @param task_id The task.
    @return The 32-byte coin.
    """
    stage: uint256 = self._load(task_id).stage
    assert stage == convert(STAGE_WORKING, uint256) or (stage >= convert(OUTCOME_AGREED, uint256) and stage <= convert(OUTCOME_FAILED, uint256)), "coin not fixed"
    return self._coin[task_id]


@view
@external
def result_of(task_id: uint256) -> bytes32:
    """
    @notice The result all workers agreed on; reverts for any other outcome.
    @param task_id The task.
    @return The agreed 32-byte result digest.
    """
    assert self._load(task_id).stage == convert(OUTCOME_AGREED, uint256), "no agreed result"
    return self._first_result[task_id]


@view
@external
def owed(task_id: uint256, account: address) -> uint256:
    """
    @notice What `claim` would pay `account` now (0 before the task ends).
    @param task_id The task.
    @param account A worker, the requester, or anyone.
    @return Wei owed.
    """
    p: Progress = self._load(task_id)
    if p.stage < convert(OUTCOME_AGREED, uint256):
        return 0
    reward: uint256 = self._funding[task_id] >> 160
    amount: uint256 = 0
    seat: uint256 = self._seats[task_id][account]
    if seat != SEAT_EMPTY:
        amount = self._worker_share(p.stage, p.workers, p.deposit, seat, reward)
    if not p.requester_paid and account == self._requester(task_id):
        amount += self._requester_share(p.stage, p.workers, reward)
    return amount


@view
@external
def is_trivial(task_id: uint256, result: bytes32) -> bool:
    """
    @notice Whether `result` is in the task's common-knowledge set E_ck.
    @param task_id The task.
    @param result A result digest.
    @return True if revealing it counts as a failure.
    """
    return result == empty(bytes32) or self._trivial[task_id][result]


@pure
@external
def commitment_of(result: bytes32, salt: bytes32, worker: address, task_id: uint256) -> bytes32:
    """
    @notice The commitment for (result, salt, worker, task). For tests only:
            a real worker computes it locally, never sending its result early.
    @param result The result digest.
    @param salt A random 32-byte salt.
    @param worker The committing worker.
    @param task_id The task.
    @return keccak256(abi_encode(result, salt, worker, task_id)).
    """
    return keccak256(abi_encode(result, salt, worker, task_id))


# ---------------------------------------------------------------- internals


@internal
def _fix_coin(task_id: uint256, coin: bytes32):
    self._coin[task_id] = coin
    log CoinFixed(task_id=task_id, coin=coin)


@view
@internal
def _load_known(task_id: uint256) -> Progress:
    # Unpacks in place rather than through `_load`: a nested call copies the
    # struct once more, which every worker call would pay.
    word: uint256 = self._progress[task_id]
    assert word != 0, "unknown task"
    return Progress(
        stage=word & BITS_4,
        workers=(word >> AT_WORKERS) & BITS_11,
        joined=(word >> AT_JOINED) & BITS_11,
        committed=(word >> AT_COMMITTED) & BITS_11,
        opened=(word >> AT_OPENED) & BITS_11,
        valid=(word >> AT_VALID) & BITS_11,
        mismatch=(word >> AT_MISMATCH) & BITS_1 != 0,
        requester_paid=(word >> AT_REQUESTER_PAID) & BITS_1 != 0,
        coin_committed=(word >> AT_COIN_COMMITTED) & BITS_1 != 0,
        join_blocks=(word >> AT_JOIN_BLOCKS) & BITS_24,
        commit_blocks=(word >> AT_COMMIT_BLOCKS) & BITS_24,
        reveal_blocks=(word >> AT_REVEAL_BLOCKS) & BITS_24,
        stage_start=(word >> AT_STAGE_START) & BITS_40,
        deposit=(word >> AT_DEPOSIT) & BITS_80,
    )


@view
@internal
def _load(task_id: uint256) -> Progress:
    # For the views: an unknown task reads as all zeros (phase NONE).
    if self._progress[task_id] == 0:
        return empty(Progress)
    return self._load_known(task_id)


@internal
def _save(task_id: uint256, p: Progress):
    # Every field fits its width: counters are bounded by MAX_WORKERS, windows
    # by MAX_WINDOW, the deposit by MAX_DEPOSIT, and `_phase_start` refuses
    # blocks past MAX_BLOCK.
    self._progress[task_id] = (
        p.stage
        | (p.workers << AT_WORKERS)
        | (p.joined << AT_JOINED)
        | (p.committed << AT_COMMITTED)
        | (p.opened << AT_OPENED)
        | (p.valid << AT_VALID)
        | (convert(p.mismatch, uint256) << AT_MISMATCH)
        | (convert(p.requester_paid, uint256) << AT_REQUESTER_PAID)
        | (convert(p.coin_committed, uint256) << AT_COIN_COMMITTED)
        | (p.join_blocks << AT_JOIN_BLOCKS)
        | (p.commit_blocks << AT_COMMIT_BLOCKS)
        | (p.reveal_blocks << AT_REVEAL_BLOCKS)
        | (p.stage_start << AT_STAGE_START)
        | (p.deposit << AT_DEPOSIT)
    )


@view
@internal
def _phase_start() -> uint256:
    # The block a phase starts in is kept in 40 bits: refuse rather than wrap.
    assert block.number <= MAX_BLOCK, "block number too large"
    return block.number


@view
@internal
def _requester(task_id: uint256) -> address:
    return convert(self._funding[task_id] & BITS_160, address)


# The helpers below take the fields they need rather than the Progress
# struct, which an internal call would copy.


@view
@internal
def _reveal_open(committed: uint256, workers: uint256, commit_deadline: uint256) -> bool:
    # The reveal phase opens when the last worker commits, or else when the
    # commit window closes.
    return committed == workers or block.number > commit_deadline


@pure
@internal
def _reveal_deadline(commit_deadline: uint256, reveal_blocks: uint256) -> uint256:
    # Always reveal_blocks after the commit window, even when the reveal phase
    # opened early: the last committer cannot shorten anyone's window.
    return commit_deadline + reveal_blocks


@view
@internal
def _phase(p: Progress) -> uint8:
    if p.stage != convert(STAGE_WORKING, uint256):
        return convert(p.stage, uint8)
    commit_deadline: uint256 = p.stage_start + p.commit_blocks
    if not self._reveal_open(p.committed, p.workers, commit_deadline):
        return PHASE_COMMIT
    if p.opened < p.committed and block.number <= self._reveal_deadline(commit_deadline, p.reveal_blocks):
        return PHASE_REVEAL
    return PHASE_SETTLEABLE


@view
@internal
def _deadline(p: Progress) -> uint256:
    if p.stage == convert(PHASE_JOINING, uint256) or p.stage == convert(PHASE_AWAITING_COIN, uint256):
        return p.stage_start + p.join_blocks
    if p.stage != convert(STAGE_WORKING, uint256):
        return 0
    commit_deadline: uint256 = p.stage_start + p.commit_blocks
    if not self._reveal_open(p.committed, p.workers, commit_deadline):
        return commit_deadline
    return self._reveal_deadline(commit_deadline, p.reveal_blocks)


@pure
@internal
def _worker_share(stage: uint256, workers: uint256, deposit: uint256, seat: uint256, reward: uint256) -> uint256:
    # The paper's clauses; `seat` is the worker's final seat.
    outcome: uint8 = convert(stage, uint8)
    if outcome == OUTCOME_AGREED or outcome == OUTCOME_COIN_WITHHELD:
        return deposit + reward // workers
    if outcome == OUTCOME_DISAGREED:
        return deposit // 2
    if outcome == OUTCOME_ABORTED:
        return deposit
    if seat == SEAT_REVEALED:
        return deposit // 2
    return 0


@pure
@internal
def _requester_share(stage: uint256, workers: uint256, reward: uint256) -> uint256:
    # When the workers share the reward, the rounding dust returns to the requester.
    outcome: uint8 = convert(stage, uint8)
    if outcome == OUTCOME_AGREED or outcome == OUTCOME_COIN_WITHHELD:
        return reward - workers * (reward // workers)
    return reward
