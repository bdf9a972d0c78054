"""`ape crowdml deploy-market` and `ape crowdml order …` end to end through ape's root CLI; the
evaluating workers are played on the board directly (tests/plugin/test_cli_demo.py runs real ones)."""

import json
import re

import pytest
from eth_utils import keccak

from crowdml_compute.digest import encode_bits

DEPOSIT = 2 * 10**16
SAMPLES = 10


@pytest.fixture
def ape(ape):
    """The suite's `ape` runner, with ape's padded `ERROR:` prefix printed as `ERROR: `."""
    def run(*args, **kwargs):
        return re.sub(r"^ERROR: +", "ERROR: ", ape(*args, **kwargs))

    return run


@pytest.fixture
def deployed(ape, accounts, project):
    out = ape("deploy", "--sink", accounts[9].address, account=0)
    board = project.TaskBoard.at(re.search(r"board (0x[0-9a-fA-F]{40})", out)[1])
    out = ape("deploy-market", account=0)
    assert f"on board {board.address}" in out
    return board


def agree(board, task_id, crew, bits):
    result = keccak(encode_bits(bits))
    for w in crew:
        board.join(task_id, value=DEPOSIT, sender=w)
    for w in crew:
        salt = keccak(w.address.encode())
        board.commit(task_id, board.commitment_of(result, salt, w, task_id), sender=w)
    for w in crew:
        board.reveal(task_id, result, keccak(w.address.encode()), sender=w)


def test_an_order_from_open_to_claim(ape, deployed, accounts, state):
    board = deployed
    (state / "test.npz").write_bytes(b"the buyer's test set")
    (state / "model.crowdml").write_bytes(b"the seller's model")
    out = ape("order", "open", state / "test.npz", "--samples", SAMPLES, "--threshold", "90",
              "--price", "0.03 ether", "--reward", "0.003 ether", "--deposit", "0.02 ether",
              "--workers", 3, "--rounds", 4, account=0)
    assert "order 1 opened" in out
    (state / "junk.crowdml").write_bytes(b"junk")
    assert "offered to order 1" in ape("order", "offer", 1, state / "junk.crowdml", account=7)
    out = ape("order", "decline", 1, account=7, expect=1)
    assert "ERROR: decline the offer on order 1 refused by the market: only the buyer" in out
    assert "order 1: offer declined, open for offers again" in ape("order", "decline", 1,
                                                                    account=0)
    assert "claimed 0.003 ETH from order 1" in ape("order", "claim", 1, account=7)  # its bond
    out = ape("order", "offer", 1, state / "model.crowdml", account=8)
    assert "offered to order 1; evaluation spec 0x" in out
    out = ape("order", "serve", 1, state / "model.crowdml", account=8, expect=1)
    assert out.startswith("ERROR: order 1 is offered")  # nothing is served before a full roster
    out = ape("order", "offer", 1, state / "model.crowdml", account=7, expect=1)
    assert out.startswith("ERROR: order 1 is offered, not open for offers")
    out = ape("order", "release-data", 1, account=8, expect=1)
    assert "ERROR: release the data of order 1 refused by the market: only the buyer" in out
    assert "evaluation task 1 published" in ape("order", "release-data", 1, account=0)

    bits = [1] * 9 + [0]
    agree(board, 1, [accounts[1], accounts[2], accounts[3]], bits)
    assert "order 1: evaluating, round 1 (task 1)" in ape("order", "advance", 1, account=5)
    (state / "wrong.bits").write_bytes(encode_bits([1] * 10))
    out = ape("order", "finalize", 1, "--bits", state / "wrong.bits", account=5, expect=1)
    assert out == "ERROR: finalize order 1 refused by the market: bitstring does not match\n"
    (state / "junk.bits").write_bytes(b"not a bitstring")
    out = ape("order", "finalize", 1, "--bits", state / "junk.bits", account=5, expect=1)
    assert out.startswith("ERROR: ") and "is not a crowdml bitstring" in out
    out = ape("order", "finalize", 1, account=5, expect=1)  # nobody published the artifact
    assert out.startswith("ERROR: ") and "no worker has announced the result yet" in out
    (state / "agreed.bits").write_bytes(encode_bits(bits))
    out = ape("order", "finalize", 1, "--bits", state / "agreed.bits", account=5)
    assert "order 1: bought (bar 90 % of 10 samples)" in out

    out = ape("order", "claim", 1, account=0, expect=1)
    assert out.startswith("ERROR: order 1 (bought) owes")
    assert "claimed 0.033 ETH from order 1" in ape("order", "claim", 1, account=8)  # + bond
    status = ape("order", "status", 1)
    assert "bought" in status and "90 % of 10 samples" in status and "task" in status
    record = json.loads(ape("order", "status", 1, "--format", "json"))
    assert (record["stage"], record["samples"], record["threshold_bps"]) == ("bought", 10, 9000)
    assert record["seller"] == accounts[8].address and record["task"]["phase"] == "agreed"
    assert ape("order", "status", 7, expect=1).startswith("ERROR: order 7 does not exist")


def test_order_mistakes_are_one_line(ape, deployed, state):
    (state / "test.npz").write_bytes(b"the buyer's test set")
    out = ape("order", "status", 7, expect=1)
    assert out.startswith("ERROR: order 7 does not exist")
    base = ["order", "open", state / "test.npz", "--samples", SAMPLES, "--price", "0.03 ether",
            "--reward", "0.003 ether", "--deposit", "0.02 ether", "--workers", 3]
    out = ape(*base, "--threshold", "90.001", account=0, expect=2)  # a usage error
    assert "is not a bar between 0.01 and 100" in out
    out = ape(*base, "--threshold", "90", "--rounds", 3, account=0, expect=1)
    assert out == ("ERROR: open an order refused by the market: deposit too small for the "
                   "price\n")
    assert "order 1 opened" in ape(*base, "--threshold", "92.5", "--rounds", 4, account=0)
    out = ape("order", "offer", 1, state / "missing.crowdml", account=8, expect=1)
    assert out.startswith("ERROR: model file") and out.count("\n") == 1
    out = ape("order", "offer", 1, state / "test.npz", "--uri", 'has"quote', account=8, expect=1)
    assert out.startswith("ERROR: model URI")
    assert "order 1: cancelled" in ape("order", "cancel", 1, account=0)
    assert "claimed 0.033 ETH from order 1" in ape("order", "claim", 1, account=0)


def test_no_market_is_one_line(ape, state):
    out = ape("order", "status", 1, expect=1)
    assert out.startswith("ERROR: no model market on this chain")


def test_opening_an_order_asks_first_and_a_no_sends_nothing(ape, deployed, accounts, state):
    (state / "test.npz").write_bytes(b"the buyer's test set")
    nonce, balance = accounts[0].nonce, accounts[0].balance
    out = ape("order", "open", state / "test.npz", "--samples", SAMPLES, "--threshold", "90",
              "--price", "0.03 ether", "--reward", "0.003 ether", "--deposit", "0.02 ether",
              "--workers", 3, "--rounds", 4, account=0, answer="n\n", expect=1)
    assert "escrowing 0.033 ETH" in out and "Aborted" in out
    assert (accounts[0].nonce, accounts[0].balance) == (nonce, balance)
