"""The agent's transactions on a live network: fee caps from its options, no join it cannot
pay the gas of, and no transaction while its own earlier ones are pending."""

import pytest

from ape_crowdml.agent import Agent
from ape_crowdml.board import WorkerStatus
from ape_crowdml.errors import CrowdmlError
from ape_crowdml.parties import Requester, Worker
from ape_crowdml.preflight import WORKER_GAS, check_join
from crowdml_support import (DEPOSIT, REWARD, step_admitted, tiny_spec_file,
                             board, config)  # noqa: F401 - board, config: fixtures


@pytest.fixture
def task(board, accounts, config, tmp_path):
    return Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2,
        requester_coin=False)


def test_the_fee_caps_go_into_the_agents_transactions(board, accounts, config, task, chain):
    max_fee = 3 * chain.provider.base_fee + 10**9
    agent = Agent(Worker(board, accounts[1], config=config), max_fee=max_fee,
                  priority_fee=10**9, log=lambda line: None)
    assert step_admitted(agent)
    joined = list(board.contract.Joined.range(board.start_block, board.head + 1))
    sent = chain.provider.web3.eth.get_transaction(joined[0].transaction_hash)
    assert (sent["maxFeePerGas"], sent["maxPriorityFeePerGas"]) == (max_fee, 10**9)


def test_the_fee_caps_default_to_the_config(board, accounts, config):
    config = config.model_copy(update={"agent": config.agent.model_copy(
        update={"max_fee": 123, "priority_fee": 4, "page_blocks": 7})})
    agent = Agent(Worker(board, accounts[1], config=config), log=lambda line: None)
    assert board.fees == {"max_fee": 123, "max_priority_fee": 4} and agent.page_blocks == 7
    Agent(Worker(board, accounts[1], config=config), max_fee=500, log=lambda line: None)
    assert board.fees == {"max_fee": 500, "max_priority_fee": 4}  # the option wins


def test_a_max_fee_alone_keeps_the_priority_fee_under_it(board, accounts, config, task, chain):
    max_fee = chain.provider.base_fee + 1
    board.cap_fees(max_fee=max_fee)
    board.join(accounts[1], task)
    joined = list(board.contract.Joined.range(board.start_block, board.head + 1))
    sent = chain.provider.web3.eth.get_transaction(joined[0].transaction_hash)
    assert sent["maxFeePerGas"] == max_fee
    assert sent["maxPriorityFeePerGas"] == min(chain.provider.priority_fee, max_fee)
    with pytest.raises(CrowdmlError, match="priority fee 5 wei is above the max fee 4"):
        Agent(Worker(board, accounts[1], config=config), max_fee=4, priority_fee=5)


def test_a_base_fee_above_the_cap_holds_every_transaction(board, accounts, config, task, chain,
                                                          networks):
    if chain.provider.base_fee == 0:  # ape's anvil starts at 0
        chain.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])
        chain.mine(1)
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), max_fee=1, log=lines.append)
    assert not agent.step() and not agent.step()
    assert lines == [f"the base fee is {chain.provider.base_fee} wei, above the max fee 1: "
                     "waiting for it to fall"]  # said once
    assert board.worker_status(task, accounts[1].address) == WorkerStatus.NONE


def test_no_join_without_the_gas_of_the_calls_after_it(board, accounts, config, task):
    poor = accounts.generate_test_account()
    fee = 10**9
    accounts[0].transfer(poor, DEPOSIT + WORKER_GAS * fee - 1)
    lines = []
    agent = Agent(Worker(board, poor, config=config), max_fee=fee, log=lines.append)
    agent.step()
    # Funds can come: the task stays followed and is checked again.
    assert lines == [f"task {task}: not joining for now: join task {task}: insufficient funds: "
                     f"the deposit {DEPOSIT} wei plus the gas of join, commit, reveal and claim "
                     f"({WORKER_GAS} at {fee} wei) is {DEPOSIT + WORKER_GAS * fee} wei, the "
                     f"account holds {DEPOSIT + WORKER_GAS * fee - 1} (checked again every 60 s)"]
    assert board.worker_status(task, poor.address) == WorkerStatus.NONE
    # One wei more passes the check (ape's test chain then asks a whole block's gas limit of
    # the join itself; a live network's estimate is what WORKER_GAS covers).
    info = board.task(task)
    check_join(info, board.head + 1, WorkerStatus.NONE, is_sink=False,
               balance=DEPOSIT + WORKER_GAS * fee, fee_per_gas=fee)


@pytest.mark.anvil  # depends on the node: run on anvil too
def test_pending_transactions_of_the_account_are_waited_for(board, accounts, config, task,
                                                           networks, chain):
    """As after a restart whose predecessor left a transaction in the mempool."""
    if networks.provider.name != "foundry":
        pytest.skip("needs a node with a mempool: run with --network ethereum:local:foundry")
    me = accounts[1].address
    web3 = chain.provider.web3
    lines = []
    agent = Agent(Worker(board, accounts[1], config=config), log=lines.append)
    chain.provider.make_request("evm_setAutomine", [False])
    try:
        web3.eth.send_transaction({"from": me, "to": accounts[3].address, "value": 1})
        assert not agent.step() and not agent.step()
        assert lines == [f"1 transaction(s) of {me} pending: waiting for them to be mined "
                         "before sending more"]
    finally:
        chain.provider.make_request("evm_setAutomine", [True])
    chain.mine(1)
    assert step_admitted(agent) and lines[-1] == f"task {task}: joined"
