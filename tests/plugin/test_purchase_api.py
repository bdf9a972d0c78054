"""The purchase's Python side: the spec template, the seller's checks before offering, and the
Buyer/Seller/Market objects against a deployed ModelPurchase."""

from pathlib import Path

import pytest
from eth_utils import keccak

EVALUATION_SLICES = 2  # exact.EVALUATION_SLICES (exact.py imports jax, the plugin has none)
from ape_crowdml.errors import (DataDigestMismatch, ModelNotServedYet, PolicyRefused, SpecError,
                                TaskRejected, UnknownOrder)
from ape_crowdml.purchase import (
    Buyer, Market, Seller, Stage, check_template, fill_template, split_template,
)
from ape_crowdml.render import order_record, order_table
from crowdml_compute.spec import Canary, make_spec
from ape_crowdml.config import crowdml_config
from ape_crowdml.parties import Worker

SAMPLES = 20


@pytest.fixture
def test_data(tmp_path):
    path = tmp_path / "test.npz"
    path.write_bytes(b"the buyer's test set")
    return path


def evaluation(test_data, job="jobs/evaluate_classifier.py", samples=SAMPLES, **extra):
    return make_spec(job, test_data, {"model_digest": "0x" + "0" * 64, "model_uri": "x",
                                      "subset_size": samples, **extra})


class FakeOrder:
    order_id = 1
    samples = SAMPLES
    test_data = keccak(b"the buyer's test set")


def test_filling_the_template_gives_the_spec_with_the_model(test_data):
    head, tail = split_template(evaluation(test_data))
    model = keccak(b"model")
    spec = fill_template(head, tail, model, "https://models.example/m.crowdml")
    blank = evaluation(test_data)
    expected = blank.model_copy(update={"hparams": {
        **blank.hparams, "model_digest": "0x" + model.hex(),
        "model_uri": "https://models.example/m.crowdml"}})
    assert spec == expected and spec.digest() == expected.digest()


def test_a_template_must_be_fillable(test_data):
    with pytest.raises(SpecError, match="no canary"):
        split_template(evaluation(test_data).model_copy(update={"canary": Canary(
            coin="0x" + "1" * 64, digest="0x" + "2" * 64)}))
    with pytest.raises(SpecError, match="Extra inputs are not permitted"):
        evaluation(test_data, model_name="between the two")  # make_spec refuses unknown hparams
    spec = evaluation(test_data)
    spliced = spec.model_copy(update={"hparams": {**spec.hparams, "model_name": "between"}})
    with pytest.raises(SpecError, match="side by side"):
        split_template(spliced)  # a spec built by hand is still checked
    head, tail = split_template(evaluation(test_data))
    with pytest.raises(SpecError, match="model URI"):
        fill_template(head, tail, keccak(b"m"), "with space")
    with pytest.raises(SpecError, match="not a spec's canonical JSON"):
        fill_template(head.replace(b'"canary":null', b'"canary": null'), tail, keccak(b"m"), "u")


def test_a_seller_checks_the_template_before_offering(test_data):
    assert check_template(FakeOrder, *split_template(evaluation(test_data))).hparams[
        "subset_size"] == SAMPLES
    with pytest.raises(PolicyRefused, match="runs job"):
        check_template(FakeOrder, *split_template(evaluation(test_data).model_copy(
            update={"job": "jobs/train_classifier.py",
                    "job_digest": "0x" + keccak(Path("jobs/train_classifier.py").read_bytes()).hex()})))
    with pytest.raises(PolicyRefused, match="evaluates 21 samples, the contract counts 20"):
        check_template(FakeOrder, *split_template(evaluation(test_data, samples=21)))
    exact = check_template(FakeOrder, *split_template(evaluation(test_data))).hparams
    assert (exact["arithmetic"], exact["exact_slices"]) == ("exact", EVALUATION_SLICES)
    portable = evaluation(test_data)  # a float evaluation under the portable profile
    floating = portable.model_copy(update={"hparams": {**portable.hparams,
                                                       "arithmetic": "float"}})
    with pytest.raises(PolicyRefused, match="runs only jobs with exact arithmetic"):
        check_template(FakeOrder, *split_template(floating))
    test_data.write_bytes(b"another test set")
    with pytest.raises(PolicyRefused, match="evaluates data"):
        check_template(FakeOrder, *split_template(evaluation(test_data)))


@pytest.fixture
def market(board, accounts):
    from ape_crowdml.board import Board

    return Market.deploy(accounts[0], Board(board.address))


def test_a_market_named_by_address_scans_from_its_own_creation_block(market, chain):
    """A purchase worker rebuilds an order's spec from a Market named only by its address:
    it must not scan from genesis (slow, or refused by providers on a live network)."""
    created = market.contract.CREATED_AT()
    assert 0 < created <= chain.blocks.head.number
    assert Market(market.address).start_block == created


def test_buyer_and_seller_objects(market, accounts, test_data, tmp_path, project):
    with project.temp_config(crowdml={"state_folder": str(tmp_path / "state")}):
        buyer, seller = Buyer(market, accounts[0]), Seller(market, accounts[8])
        order = buyer.open(buyer.template(test_data, samples=SAMPLES), price=3 * 10**16,
                           threshold_bps=9000, reward=3 * 10**15, deposit=2 * 10**16,
                           workers=3, max_rounds=4)
        assert market.order(order).stage == Stage.OPEN and market.order(order).samples == SAMPLES
        with pytest.raises(TaskRejected, match="owes"):
            buyer.claim(order)
        model = tmp_path / "model.crowdml"
        model.write_bytes(b"weights")
        spec = seller.offer(order, model)
        assert market.order(order).spec == spec == market.evaluation_spec(order).digest()
        # The offer names the folder of the sealed copies (this seller's store), never the file.
        assert market.evaluation_spec(order).hparams["model_uri"] == \
            seller.model_store().folder_uri()
        assert market.order(order).bond == market.order(order).offer_bond == 3 * 10**15
        with pytest.raises(TaskRejected, match="not open for offers"):
            Seller(market, accounts[7]).offer(order, model)
        test_data.unlink()  # the buyer does not serve its data: released, workers could not run
        with pytest.raises(DataDigestMismatch):
            buyer.release_data(order)
        test_data.write_bytes(b"the buyer's test set")
        task = buyer.release_data(order)
        assert market.board.task(task).spec == spec
        # The evaluation task names its order; a worker sharing no store rebuilds the spec from
        # the market's events (the task's requester) and checks it against the board's digest.
        assert market.board.spec_uri(task) == f"crowdml-order:{order}"
        alone = crowdml_config().model_copy(update={"state_folder": tmp_path / "stranger"})
        assert Worker(market.board, accounts[5], config=alone).spec_of(task) == \
            market.evaluation_spec(order)
        assert "evaluating" in _render(order_table(market, order))
        record = order_record(market, order)
        assert (record["stage"], record["task"]["id"], record["offer_bond"]) == \
            ("evaluating", task, 3 * 10**15)
        with pytest.raises(UnknownOrder, match="order 99 does not exist"):
            market.order(99)


def _render(table):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_a_round_the_seller_never_serves_scores_no_model_and_refuses_it(
        accounts, tmp_path, project, chain):
    """Real workers and jobs: the roster presents its keys, the seller serves nothing by the
    serve deadline; each worker records that from the chain, its job scores no model (every
    bit 0), they agree, and the model is refused: the offer's bond goes to the buyer. Nobody,
    the buyer included, was ever handed the model."""
    import ape

    from ape_crowdml.parties import deploy_board
    from crowdml_compute.data import export_digits
    from crowdml_support import isolated_config

    # A board whose forfeits are burned, which workers accept.
    market = Market.deploy(accounts[0], deploy_board(accounts[0],
                                                     config=isolated_config(tmp_path / "deployer")))
    data = tmp_path / "test.npz"
    export_digits(data)
    with project.temp_config(crowdml={"state_folder": str(tmp_path / "state")}):
        buyer, seller = Buyer(market, accounts[0]), Seller(market, accounts[8])
        order = buyer.open(buyer.template(data, samples=SAMPLES), price=3 * 10**16,
                           threshold_bps=9000, reward=2 * 10**15, deposit=2 * 10**16, workers=2,
                           max_rounds=4, commit_blocks=30)
        model = tmp_path / "model.crowdml"
        model.write_bytes(b"weights nobody will see")
        seller.offer(order, model)
        task = buyer.release_data(order)
    crew = [Worker(market.board, accounts[i], config=isolated_config(tmp_path / f"w{i}"))
            for i in (1, 2)]
    for worker in crew:
        worker.join(task)
    with pytest.raises(ModelNotServedYet, match="may serve the model until block"):
        crew[0].work(task)  # presents its key, then waits for the seller
    assert not crew[1].receive_model(task)  # presents its key
    assert set(market.presented_keys(order, task)) == {w.account.address for w in crew}
    with ape.reverts("not on the roster"):
        market.contract.present_key(order, keccak(b"buyer's key"), sender=accounts[0])
    chain.mine(market.serve_deadline(order) - chain.blocks.head.number + 1)
    with pytest.raises(TaskRejected, match="serve window closed"):
        seller.serve(order, model)
    digests = {worker.work(task) for worker in crew}
    for worker in crew:
        worker.reveal(task)
    buyer.advance(order)
    for worker in crew:
        worker.claim(task)  # publishes the agreed bitstring
    bits = buyer.agreed_bits(order)
    assert len(digests) == 1 and not bits.any() and len(bits) == SAMPLES
    assert buyer.finalize(order, bits) == Stage.REFUSED
    # The price back to the buyer; the bond of a model never served is forfeited to the sink.
    assert market.owed(order, accounts[0].address) == 3 * 10**16
    assert market.owed(order, accounts[8].address) == 0 and market.contract.forfeited() == 2 * 10**15


def test_a_low_order_key_does_not_stop_the_model_being_served(accounts, tmp_path, project):
    """A seated worker (the buyer's sybil, say) presents a key libsodium refuses to seal to: the
    seller skips it and serves the rest, instead of failing the whole serve (which would make
    the round score no model and refuse a good model)."""
    from ape_crowdml.delivery import new_result_key
    from ape_crowdml.parties import deploy_board
    from crowdml_support import isolated_config

    market = Market.deploy(accounts[0], deploy_board(accounts[0],
                                                     config=isolated_config(tmp_path / "deployer")))
    data = tmp_path / "test.npz"
    data.write_bytes(b"the buyer's test set")
    buyer = Buyer(market, accounts[0], config=isolated_config(tmp_path / "buyer"))
    seller = Seller(market, accounts[8], config=isolated_config(tmp_path / "seller"))
    order = buyer.open(buyer.template(data, samples=SAMPLES), price=3 * 10**16,
                       threshold_bps=9000, reward=2 * 10**15, deposit=2 * 10**16, workers=2,
                       max_rounds=4)
    model = tmp_path / "model.crowdml"
    model.write_bytes(b"weights")
    seller.offer(order, model)
    task = buyer.release_data(order)
    honest, sybil = accounts[1], accounts[2]
    for worker in (honest, sybil):
        market.board.contract.join(task, value=2 * 10**16, sender=worker)
    market.contract.present_key(order, new_result_key()[0], sender=honest)
    market.contract.present_key(order, bytes([1]) + bytes(31), sender=sybil)  # low order
    served = seller.serve(order, model)
    assert list(served) == [honest.address]
    assert market.served_boxes(order, task) == served
