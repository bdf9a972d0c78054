"""Agents evaluating a model purchase on their own: they join the order's evaluation task,
present a key each once the roster is full, wait for the seller, open their sealed copies, run
the evaluation job and agree. The model never leaves the seller before the roster is full."""

import time

import numpy as np

from ape_crowdml.agent import Agent
from ape_crowdml.board import Phase
from crowdml_compute.data import export_digits
from crowdml_compute.digest import encode_pytree
from ape_crowdml.parties import Worker, deploy_board
from ape_crowdml.purchase import Buyer, Market, Seller, Stage
from crowdml_support import isolated_config

SAMPLES = 40


def centroid_model(data) -> bytes:
    """A one-layer MLP on the digits' pixels that picks the nearest class mean: right on most
    samples, so a served model is told apart from "no model" (every bit 0)."""
    with np.load(data) as npz:
        x, y = npz["x_train"].reshape(len(npz["y_train"]), -1), npz["y_train"]
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    return encode_pytree({"params": {"Dense_0": {
        "kernel": means.T.astype(np.float32),
        "bias": (-0.5 * (means ** 2).sum(axis=1)).astype(np.float32)}}})


def step_until(agents, until, chain, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the agents did not get there"
        acted = [agent.step() for agent in agents]
        if not any(acted) and not any(agent.admitting for agent in agents):
            chain.mine(1)
            time.sleep(0.05)


def test_agents_evaluate_a_purchase_served_to_their_full_roster(accounts, chain, tmp_path):
    board = deploy_board(accounts[0], config=isolated_config(tmp_path / "deployer"))
    market = Market.deploy(accounts[0], board)
    data = tmp_path / "test.npz"
    export_digits(data)
    buyer = Buyer(market, accounts[0], config=isolated_config(tmp_path / "buyer"))
    seller = Seller(market, accounts[8], config=isolated_config(tmp_path / "seller"))
    order = buyer.open(buyer.template(data, samples=SAMPLES), price=3 * 10**16, threshold_bps=1000,
                       reward=2 * 10**15, deposit=2 * 10**16, workers=2, max_rounds=4,
                       join_blocks=40, commit_blocks=60, reveal_blocks=20)
    model = tmp_path / "model.crowdml"
    model.write_bytes(centroid_model(data))
    seller.offer(order, model)
    task = buyer.release_data(order)
    lines = []
    agents = [Agent(Worker(board, accounts[i], config=isolated_config(tmp_path / f"w{i}")),
                    log=lines.append) for i in (1, 2)]
    # The agents join; once the roster is full each presents its key and waits for the seller.
    step_until(agents, lambda: len(market.presented_keys(order, task)) == 2, chain)
    assert board.phase(task) == Phase.COMMIT and not market.order(order).served
    served = seller.serve(order, model)
    assert set(served) == {accounts[1].address, accounts[2].address}
    step_until(agents, lambda: board.phase(task) >= Phase.SETTLEABLE
               and board.reveals(task).keys() == served.keys(), chain)
    seller.advance(order)
    assert board.phase(task) == Phase.AGREED, lines
    step_until(agents, lambda: all(agent.finished for agent in agents), chain)
    bits = seller.agreed_bits(order)
    assert bits.sum() > SAMPLES // 2, lines  # the served model, not "no model" (all zeros)
    assert not any("no model" in line for line in lines)
    assert seller.finalize(order, bits) in (Stage.BOUGHT, Stage.REFUSED)
