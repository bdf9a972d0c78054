"""Buying a model only if it is good enough: the paper's first instance (§V), decided on chain by
contracts/ModelPurchase.vy, with the evaluation run by a TaskBoard's workers.

    market = Market.deploy(accounts.test_accounts[0], board)      # or find_market()
    alice = Buyer(market, accounts.test_accounts[0])
    order = alice.open(alice.template("data/test.npz", samples=200), price=3 * 10**16,
                       threshold_bps=9000, reward=3 * 10**15, deposit=2 * 10**16, workers=3)
    bob = Seller(market, accounts.test_accounts[5])
    bob.offer(order, "model.crowdml")           # locks the model's digest and a bond; serves nothing
    alice.release_data(order)                   # the evaluation task goes on the board
    ...                                         # workers join; once the roster is full each
    bob.serve(order, "model.crowdml")           #   presents a key, the model is sealed to each,
    ...                                         #   then they work and reveal (Worker / Agent)
    bob.advance(order); bob.finalize(order)     # anyone; the contract counts the bitstring
    bob.claim(order)

The evaluation spec is fixed by the buyer as a template: the canonical JSON of an
`evaluate_classifier.py` spec, cut around the model's digest and URI (`split_template`). The
seller's offer fills them in on chain, so the spec on the board is "this model on the buyer's test
set" and nothing else. A seller checks the template (`check_template`) before offering.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from eth_utils import to_checksum_address

from .artifacts import ArtifactStore
from .board import Board, hex32, mined, send, transaction
from .config import CrowdmlConfig, crowdml_config
from .logs import KeptLogs
from crowdml_compute.data import read_verified
from crowdml_compute.digest import bits_body, decode_bits, file_digest, keccak_digest
from crowdml_compute.jobs import shipped_folder
from .errors import (BoardNotConfigured, CrowdmlError, PolicyRefused, SpecError, TaskRejected,
                     UnknownOrder)
from crowdml_compute.spec import JobSpec, check_arithmetic, make_spec, parse_spec

PACKAGED_PURCHASE = Path(__file__).with_name("ModelPurchase.json")
EVALUATION_JOB = "evaluate_classifier.py"
# A seller's policy: a roster larger than this may never fill, so an offer would only expose
# the seller's bond to an order that can never be evaluated (the contract allows up to 32).
MAX_STAFFABLE_WORKERS = 16
BPS = 10_000

MODEL_DIGEST_KEY = b'"model_digest":"0x'
MODEL_URI_KEY = b'","model_uri":"'  # what the contract puts between the digest and the URI
_NO_MODEL = "0x" + "0" * 64
_URI_MARK = "crowdml-model-uri-goes-here"


class Stage(IntEnum):
    """ModelPurchase order stages."""

    NONE = 0
    OPEN = 1
    OFFERED = 2
    EVALUATING = 3
    BOUGHT = 4
    REFUSED = 5
    CANCELLED = 6
    LAPSED = 7
    UNEVALUATED = 8

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def ended(self) -> bool:
        return self >= Stage.BOUGHT


@dataclass(frozen=True)
class OrderInfo:
    """ModelPurchase.order(), with the stage decoded."""

    order_id: int
    buyer: str
    seller: str
    stage: Stage
    price: int
    reward: int
    escrow: int
    threshold: int
    samples: int
    test_data: bytes
    template: bytes
    workers: int
    deposit: int
    join_blocks: int
    commit_blocks: int
    reveal_blocks: int
    max_rounds: int
    rounds: int
    offer_deadline: int
    release_blocks: int
    finalize_blocks: int
    model: bytes
    spec: bytes
    step_start: int
    agreed_at: int
    task_id: int
    offer_bond: int
    bond: int
    filled: int
    served: bool
    exposed: bool


# ---------------------------------------------------------------- the spec template


def check_uri(uri: str) -> None:
    """The contract puts the URI in the JSON as it is: printable ASCII, no quote or backslash."""
    if not uri or any(not 32 < ord(c) < 127 or c in '"\\' for c in uri):
        raise SpecError(f"model URI {uri!r} must be printable ASCII without spaces, quotes or "
                        "backslashes")


def split_template(spec: JobSpec) -> tuple[bytes, bytes]:
    """(head, tail): the spec's canonical JSON before the model digest's hex and after the
    model URI, as ModelPurchase.offer joins them."""
    if spec.canary is not None:
        raise SpecError("an evaluation template has no canary: it would need the model")
    marked = spec.model_copy(update={"hparams": {
        **spec.hparams, "model_digest": _NO_MODEL, "model_uri": _URI_MARK}})
    text = marked.canonical_json()
    middle = MODEL_DIGEST_KEY + _NO_MODEL[2:].encode() + MODEL_URI_KEY + _URI_MARK.encode()
    if text.count(middle) != 1:
        raise SpecError("the template's hparams must hold model_digest and model_uri side by side")
    at = text.index(middle)
    return text[: at + len(MODEL_DIGEST_KEY)], text[at + len(middle):]


def fill_template(head: bytes, tail: bytes, model: bytes, uri: str) -> JobSpec:
    """The evaluation spec an offer of `model` at `uri` gets (its digest is the order's spec)."""
    check_uri(uri)
    text = head + model.hex().encode() + MODEL_URI_KEY + uri.encode() + tail
    spec = parse_spec(text, "the order's evaluation template")
    if spec.canonical_json() != text:
        raise SpecError("the order's evaluation template is not a spec's canonical JSON")
    return spec


def check_template(order: OrderInfo, head: bytes, tail: bytes) -> JobSpec:
    """Seller side, before offering: the template must evaluate a model with the shipped
    evaluation job, on the order's test data, on exactly the order's number of samples."""
    spec = fill_template(head, tail, b"\x00" * 32, _URI_MARK)
    job = shipped_folder() / EVALUATION_JOB
    if spec.job_digest != "0x" + file_digest(job).hex():
        raise PolicyRefused(f"order {order.order_id} runs job {spec.job} ({spec.job_digest}), "
                            f"not {job}: refusing to offer")
    if spec.data_digest != hex32(order.test_data):
        raise PolicyRefused(f"order {order.order_id}'s template evaluates data "
                            f"{spec.data_digest}, not the order's {hex32(order.test_data)}")
    if spec.hparams.get("subset_size") != order.samples:
        raise PolicyRefused(f"order {order.order_id}'s template evaluates "
                            f"{spec.hparams.get('subset_size')} samples, the contract counts "
                            f"{order.samples}")
    # Float evaluation under a portable profile could flip a correctness bit between the
    # evaluation's workers: the round would disagree instead of judging the model.
    try:
        check_arithmetic(spec)
    except SpecError as exc:
        raise PolicyRefused(f"order {order.order_id}'s template: {exc}") from None
    return spec


# ---------------------------------------------------------------- the contract


@contextmanager
def market_transaction(action: str):
    """board.transaction's one-line errors, naming the market as the one that refused."""
    from ape.exceptions import ContractLogicError

    with transaction(action):
        try:
            yield
        except ContractLogicError as exc:
            raise TaskRejected(f"{action} refused by the market: {exc.message}") from None


def purchase_container():
    """The ModelPurchase contract container, from the compiled type shipped with the package."""
    from ape.contracts import ContractContainer
    from ethpm_types import ContractType

    return ContractContainer(ContractType.model_validate_json(PACKAGED_PURCHASE.read_text()))


def _market_file(config: CrowdmlConfig) -> Path:
    return config.state_folder / "markets.json"


def find_market(address: str | None = None, *, config: CrowdmlConfig | None = None) -> Market:
    """`address`, else the market most recently deployed from this machine on this chain."""
    from ape import chain

    if address:
        return Market(address)
    config = config or crowdml_config()
    path = _market_file(config)
    known = json.loads(path.read_text()) if path.is_file() else {}
    entry = known.get(str(chain.chain_id))
    if entry and entry[1] <= chain.blocks.head.number and chain.provider.get_code(entry[0]):
        return Market(entry[0], start_block=entry[1])
    raise BoardNotConfigured("no model market on this chain: pass --market or run "
                             "`ape crowdml deploy-market`")


def deploy_market(account, board: Board, *, config: CrowdmlConfig | None = None) -> Market:
    """Deploy a ModelPurchase for `board` and remember it for this chain."""
    config = config or crowdml_config()
    market = Market.deploy(account, board)
    path = _market_file(config)
    known = json.loads(path.read_text()) if path.is_file() else {}
    known[str(market.board.chain_id)] = [market.address, market.start_block]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known))
    return market


class Market:
    """A deployed ModelPurchase and the board it publishes evaluations on."""

    def __init__(self, address: str, start_block: int | None = None):
        """`start_block`: where event scans start; default the market's own record of its
        creation block (CREATED_AT), so that a market named only by its address (a purchase
        worker rebuilding an order's evaluation spec) never scans from genesis."""
        from ape import chain

        address = to_checksum_address(address)
        if not chain.provider.get_code(address):
            raise BoardNotConfigured(f"no contract at {address} on chain {chain.chain_id}")
        self.address = address
        self.contract = purchase_container().at(address)
        self.start_block = self.contract.CREATED_AT() if start_block is None else start_block
        self.logs = KeptLogs(self.contract, self.start_block)
        self.board = Board(self.contract.BOARD(), start_block=start_block)

    def __repr__(self) -> str:
        return f"<Market {self.address} on board {self.board.address}>"

    @classmethod
    def deploy(cls, sender, board: Board) -> Market:
        container = purchase_container()
        with market_transaction("deploy the market"):
            # Through mined(): on a chain that mines on a clock ape returns before the block
            # that creates the contract.
            receipt = mined("deploy the market", sender.call(
                container.constructor.serialize_transaction(board.address, sender=sender)))
        return cls(receipt.contract_address,
                   start_block=min(board.start_block, receipt.block_number))

    def order(self, order_id: int) -> OrderInfo:
        count = self.contract.order_count()
        if not 1 <= order_id <= count:
            raise UnknownOrder(f"order {order_id} does not exist on market {self.address} "
                               f"(orders 1..{count})")
        view = self.contract.order(order_id)
        fields = {name: getattr(view, name) for name in OrderInfo.__dataclass_fields__
                  if name != "order_id"}
        fields["stage"] = Stage(fields["stage"])
        for name in ("test_data", "template", "model", "spec"):
            fields[name] = bytes(fields[name])
        return OrderInfo(order_id=order_id, **fields)

    def _event(self, name: str, order_id: int):
        logs = self.logs.read(name, order_id=order_id)
        if not logs:
            raise CrowdmlError(f"order {order_id} has no {name} event after block "
                               f"{self.start_block}")
        return logs[-1]

    def template(self, order_id: int) -> tuple[bytes, bytes]:
        """The order's template (head, tail), read from its OrderOpened event."""
        log = self._event("OrderOpened", order_id)
        return bytes(log.template_head), bytes(log.template_tail)

    def model_uri(self, order_id: int) -> str:
        return self._event("Offered", order_id).model_uri

    def _round_logs(self, name: str, order_id: int, task_id: int) -> list:
        return [log for log in self.logs.read(name, order_id=order_id) if log.task_id == task_id]

    def presented_keys(self, order_id: int, task_id: int) -> dict[str, bytes]:
        """The X25519 keys the round's workers presented (the last one of each), by worker."""
        return {to_checksum_address(log.worker): bytes(log.key)
                for log in self._round_logs("KeyPresented", order_id, task_id)}

    def served_boxes(self, order_id: int, task_id: int) -> dict[str, bytes] | None:
        """The sealed copies the seller said it served in the round (worker → the box's
        keccak256), or None while it has said nothing."""
        logs = self._round_logs("ModelServed", order_id, task_id)
        if not logs:
            return None
        return {to_checksum_address(w): bytes(b) for w, b in zip(logs[-1].workers, logs[-1].boxes)}

    def serve_deadline(self, order_id: int) -> int:
        return self.contract.serve_deadline(order_id)

    def evaluation_spec(self, order_id: int) -> JobSpec:
        """The spec the order's evaluation tasks run, checked against the digest on chain."""
        order = self.order(order_id)
        if order.stage < Stage.OFFERED or order.model == b"\x00" * 32:
            raise CrowdmlError(f"order {order_id} has no offer yet")
        spec = fill_template(*self.template(order_id), order.model, self.model_uri(order_id))
        if spec.digest() != order.spec:
            raise SpecError(f"order {order_id}'s spec on chain is {hex32(order.spec)}, its "
                            f"events give {hex32(spec.digest())}")
        return spec

    def owed(self, order_id: int, account: str) -> int:
        return self.contract.owed(order_id, account)


# ---------------------------------------------------------------- the parties


class Trader:
    """What buyers and sellers share: a market, an account, the config; anyone may `advance` and
    `finalize`; the payee may `claim`."""

    def __init__(self, market: Market, account, *, config: CrowdmlConfig | None = None):
        self.market = market
        self.account = account
        self.config = config or crowdml_config()
        self.artifacts = ArtifactStore(self.config.artifact_url())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.account.address} on {self.market.address}>"

    def _send(self, action: str, function: str, *args, value: int = 0):
        """Simulate, send, wait for the block (as the board's calls do): a call the market
        refuses sends nothing, and state read afterwards includes the transaction."""
        with market_transaction(action):
            return send(self.market.contract, action, function, *args, sender=self.account,
                        value=value, refuser="the market")

    def _publish_spec(self, spec: JobSpec) -> None:
        # Workers look the spec up by its digest in their store and in the spec's own.
        stores = {self.artifacts.url: self.artifacts}
        if spec.store:
            stores[spec.store] = ArtifactStore(spec.store)
        for store in stores.values():
            store.put(spec.canonical_json())

    def advance(self, order_id: int) -> Stage:
        """Settle or abort a due evaluation task, retry one that did not agree, or close an
        order whose evaluation cannot finish; returns the stage after it."""
        self.market.order(order_id)
        self._send(f"advance order {order_id}", "advance", order_id)
        return self.market.order(order_id).stage

    def agreed_bits(self, order_id: int):
        """The agreed correctness bitstring, read at the URIs its workers announced (in the
        clear: an evaluation spec names no result key) or found in this party's store,
        verified against the board's result digest."""
        from .delivery import fetch_agreed
        from .errors import ArtifactMissing

        board = self.market.board
        task_id = self.market.order(order_id).task_id
        try:
            delivery = fetch_agreed(board.announcements(task_id), board.result(task_id),
                                    secret_key=None, local_ok=self.config.local_uris_allowed(),
                                    shared=self.artifacts)
        except ArtifactMissing as exc:
            raise ArtifactMissing(f"order {order_id}'s evaluation task {task_id}: "
                                  f"{exc}") from None
        return decode_bits(delivery.artifact)

    def finalize(self, order_id: int, bits=None) -> Stage:
        """Hand the contract the agreed bitstring (fetched when not given); it counts the ones
        and pays the seller or refunds the buyer. Returns BOUGHT or REFUSED."""
        if bits is None:
            bits = self.agreed_bits(order_id)
        self._send(f"finalize order {order_id}", "finalize", order_id, bits_body(bits))
        return self.market.order(order_id).stage

    def claim(self, order_id: int) -> int:
        """Collect an ended order's escrow (the seller's price, or the buyer's refund);
        returns the wei paid."""
        order = self.market.order(order_id)
        owed = self.market.owed(order_id, self.account.address)
        if not owed:
            raise TaskRejected(f"order {order_id} ({order.stage.label}) owes "
                               f"{self.account.address} nothing")
        self._send(f"claim from order {order_id}", "claim", order_id)
        return owed


class Buyer(Trader):
    def template(self, test_data: str | Path, *, samples: int, data_uri: str | None = None,
                 profile: str | None = None, store: str | None = None) -> JobSpec:
        """An evaluation spec of the shipped evaluate job on `test_data`, model left blank.
        `data_uri` is where the data will be served once released (default: the file)."""
        return make_spec(shipped_folder() / EVALUATION_JOB, test_data,
                         {"model_digest": _NO_MODEL, "model_uri": _URI_MARK,
                          "subset_size": samples},
                         profile=profile, store=store, data_uri=data_uri)

    def open(self, template: JobSpec, *, price: int, threshold_bps: int, reward: int,
             deposit: int, workers: int, join_blocks: int = 20, commit_blocks: int = 20,
             reveal_blocks: int = 20, offer_blocks: int = 200, release_blocks: int = 20,
             finalize_blocks: int = 20, max_rounds: int = 3, offer_bond: int | None = None) -> int:
        """Open an order escrowing price + reward; returns its id. `offer_bond` (default one
        evaluation reward) is what an offer locks, the buyer's if the model is refused."""
        head, tail = split_template(template)
        samples = template.hparams.get("subset_size")
        if not isinstance(samples, int):
            raise SpecError("the template's hparams need an integer subset_size")
        evaluation = (workers, deposit, reward, join_blocks, commit_blocks, reveal_blocks)
        deadlines = (self.market.board.head + offer_blocks, release_blocks, finalize_blocks,
                     max_rounds)
        receipt = self._send("open an order", "open_order", price, threshold_bps, samples,
                             bytes.fromhex(template.data_digest[2:]), head, tail, evaluation,
                             deadlines, reward if offer_bond is None else offer_bond,
                             value=price + reward)
        return receipt.decode_logs(self.market.contract.OrderOpened)[0].order_id

    def release_data(self, order_id: int) -> int:
        """Check the test data is served at the template's URI, publish the evaluation spec,
        then release: the first evaluation task goes on the board. Returns its task id."""
        spec = self.market.evaluation_spec(order_id)
        read_verified(spec.data_uri, spec.data_digest, cached=False)
        self._publish_spec(spec)
        self._send(f"release the data of order {order_id}", "release_data", order_id)
        return self.market.order(order_id).task_id

    def decline(self, order_id: int) -> Stage:
        """Turn down the locked offer before releasing the data: the order is open for offers
        again and the seller's bond goes back to it. Nothing was served."""
        self.market.order(order_id)
        self._send(f"decline the offer on order {order_id}", "decline", order_id)
        return self.market.order(order_id).stage

    def cancel(self, order_id: int) -> Stage:
        """End an order that never started evaluating (refund)."""
        self.market.order(order_id)
        self._send(f"cancel order {order_id}", "cancel", order_id)
        return self.market.order(order_id).stage


class Seller(Trader):
    def model_store(self) -> ArtifactStore:
        """Where this seller uploads sealed copies of its model: its own public store
        (`crowdml: worker: result_store:`, read at `result_url`), else its state folder's
        artifact store (ape's test chain only)."""
        return ArtifactStore.own(self.config.worker, self.artifacts)

    def offer(self, order_id: int, model_file: str | Path, model_uri: str | None = None) -> bytes:
        """Check the order's template, then lock `model_file` into the order with the order's
        offer bond. `model_uri` is the folder its sealed copies will be read from (default this
        seller's model store). Returns the evaluation spec's digest.

        Nothing is served here: `serve` seals the model to each worker of a full roster."""
        order = self.market.order(order_id)
        if order.stage != Stage.OPEN:
            raise TaskRejected(f"order {order_id} is {order.stage.label}, not open for offers")
        if order.workers > MAX_STAFFABLE_WORKERS:
            raise PolicyRefused(f"order {order_id} asks for {order.workers} evaluation workers; "
                                f"a roster over {MAX_STAFFABLE_WORKERS} may never fill")
        head, tail = self.market.template(order_id)
        check_template(order, head, tail)
        model = keccak_digest(Path(model_file).read_bytes())
        uri = model_uri or self.model_store().folder_uri()
        spec = fill_template(head, tail, model, uri)
        self._publish_spec(spec)
        self._send(f"offer a model to order {order_id}", "offer", order_id, model, uri, head, tail,
                   value=order.offer_bond)
        return spec.digest()

    def serve(self, order_id: int, model_file: str | Path) -> dict[str, bytes]:
        """Serve the model to the current round: seal it to each key its full roster presented,
        upload the sealed copies to this seller's model store (under their keccak256, in the
        folder the offer named), and say so on chain. Returns worker → sealed copy's digest.

        A worker that presents its key after this is not served; a round not served by its
        serve deadline (`Market.serve_deadline`) is evaluated on no model, and refused."""
        from ape.logging import logger

        from .delivery import seal

        order = self.market.order(order_id)
        if order.seller != self.account.address:
            raise TaskRejected(f"order {order_id}'s seller is {order.seller}, not "
                               f"{self.account.address}: serve nothing")
        model = Path(model_file).read_bytes()
        if keccak_digest(model) != order.model:
            raise TaskRejected(f"{model_file} is not order {order_id}'s model {hex32(order.model)}")
        if order.stage != Stage.EVALUATING or order.served:
            raise TaskRejected(f"order {order_id} is {order.stage.label}"
                               + (", its round already served" if order.served else ""))
        if not self.market.serve_deadline(order_id):
            raise TaskRejected(f"order {order_id}'s round {order.rounds} (task {order.task_id}) "
                               "has no full roster: nothing is served before")
        store = self.model_store()
        if self.market.model_uri(order_id).rstrip("/") != store.folder_uri().rstrip("/"):
            raise TaskRejected(f"order {order_id}'s offer names {self.market.model_uri(order_id)} "
                               f"for the sealed copies; this seller's store is "
                               f"{store.folder_uri()}: serve from the store the offer named")
        sealed = {}
        for worker, key in self.market.presented_keys(order_id, order.task_id).items():
            try:
                sealed[worker] = seal(model, key)
            except Exception:  # noqa: BLE001 - libsodium refuses a low-order or malformed key
                logger.info(f"order {order_id}: {worker}'s key is not a usable X25519 key: "
                            "not served")
        if not sealed:
            raise TaskRejected(f"order {order_id}'s round {order.rounds}: no worker presented a "
                               "usable key yet")
        # Said on chain first, uploaded once that is mined: a serve the chain refuses (its
        # window closed) uploads nothing a worker could open while the round scores no model.
        # The seal is deterministic, so the copies' digests are known before the upload.
        boxes = {worker: keccak_digest(copy) for worker, copy in sealed.items()}
        self._send(f"serve order {order_id}'s model", "serve", order_id, list(boxes),
                   list(boxes.values()))
        for copy in sealed.values():
            store.put(copy)
        return boxes
