"""An upstream chain for the fork suite, as ape users test against mainnet: a chain that already
holds a board with tasks in flight.

Before ape connects to the fork (conftest.py calls `prepare_upstream` then), the session starts
a second anvil with chain id 1 on a free loopback port, names it as ethereum:mainnet's node and as the fork's upstream (`node:` uri and
`foundry.fork.ethereum.mainnet.upstream_provider: node`, set for this session only), and plays
the first half of two tasks there through the Python API: a board, a task with one of its two
seats taken, and a task whose roster is full and one of whose workers has trained and committed.
The board is named for ethereum:mainnet in `crowdml: boards:`, nothing for the fork: the test
finds it the way a user's fork would. Workers and requester keep their secrets in one state
folder, as one machine per party would keep them across the fork.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from web3 import Web3

from crowdml_support import DEPOSIT, REWARD, tiny_spec_file

UPSTREAM = "ethereum:mainnet:node"
# An odd reward: the requester's dust (1 wei) is part of what the fork test checks.
ODD_REWARD = REWARD + 1
WINDOW = 50  # blocks: room for every step on an automining chain


@dataclass
class Upstream:
    """The upstream chain as the fork found it."""

    uri: str
    board: str
    half_joined: int  # published, one of two seats taken (requester coin)
    half_committed: int  # roster full, one worker committed (chain coin)
    head: tuple[int, bytes]  # number and hash of the block the fork starts from
    balances: dict[str, int] = field(default_factory=dict)  # board and parties
    nonces: dict[str, int] = field(default_factory=dict)  # parties


# Everything the upstream holds open (its anvil, folder, config), closed at the session's end.
teardown = contextlib.ExitStack()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_anvil(folder: Path) -> str:
    """anvil with mainnet's chain id on a free loopback port; it mines only on transactions,
    so a block number and hash that stay put mean nothing was sent."""
    port = free_port()
    log = (folder / "upstream-anvil.log").open("w")
    process = subprocess.Popen(
        [shutil.which("anvil") or "anvil", "--chain-id", "1", "--host", "127.0.0.1",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    teardown.callback(log.close)
    teardown.callback(process.wait, timeout=30)
    teardown.callback(process.terminate)
    uri = f"http://127.0.0.1:{port}"
    web3 = Web3(Web3.HTTPProvider(uri))
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"the upstream anvil exited: see {log.name}")
        with contextlib.suppress(Exception):
            if web3.eth.chain_id == 1:
                return uri
        time.sleep(0.1)
    raise RuntimeError(f"the upstream anvil did not answer on {uri}")


def prepare_upstream() -> Upstream:
    from ape import accounts, networks, project

    from ape_crowdml.board import Board
    from ape_crowdml.parties import Requester, Worker

    folder = Path(teardown.enter_context(tempfile.TemporaryDirectory(prefix="crowdml-fork-")))
    uri = start_anvil(folder)
    session_config = {
        "node": {"ethereum": {"mainnet": {"uri": uri}}},
        # anvil mines on each transaction: a live network's 2 confirmations would never come.
        "ethereum": {"mainnet": {"required_confirmations": 0}},
        "foundry": {"fork": {"ethereum": {"mainnet": {"upstream_provider": "node"}}}},
        "crowdml": {"state_folder": str(folder / "state")},
    }
    project.reconfigure(**session_config)
    teardown.callback(project.reconfigure)  # back to ape-config.yaml alone

    requester, alice, bob = (accounts.test_accounts[i] for i in range(3))
    with networks.parse_network_choice(UPSTREAM):
        # Not deploy_board: like a board someone else deployed on mainnet, it is not
        # remembered in the parties' state folder, so only the config can name it.
        board = Board.deploy(requester)
        spec = tiny_spec_file(folder)
        client = Requester(board, requester)
        half_joined = client.publish(spec, reward=ODD_REWARD, deposit=DEPOSIT, workers=2,
                                     join_blocks=WINDOW, commit_blocks=WINDOW,
                                     reveal_blocks=WINDOW)
        Worker(board, alice).join(half_joined)
        half_committed = client.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                                        join_blocks=WINDOW, commit_blocks=WINDOW,
                                        reveal_blocks=WINDOW, requester_coin=False)
        Worker(board, alice).join(half_committed)
        Worker(board, bob).join(half_committed)
        Worker(board, alice).work(half_committed)

    # Board named for mainnet only: the fork must resolve its upstream's.
    session_config["crowdml"]["boards"] = {"ethereum": {"mainnet": board.address}}
    project.reconfigure(**session_config)
    return Upstream(uri=uri, board=board.address, half_joined=half_joined,
                    half_committed=half_committed, **upstream_facts(uri, board.address))


def upstream_facts(uri: str, board: str) -> dict:
    """What the fork must leave as it is: the upstream's head, the board's and the parties'
    balances, the parties' nonces."""
    from ape import accounts

    web3 = Web3(Web3.HTTPProvider(uri))
    head = web3.eth.get_block("latest")
    parties = [accounts.test_accounts[i].address for i in range(4)]
    return {"head": (head.number, bytes(head.hash)),
            "balances": {a: web3.eth.get_balance(a) for a in (board, *parties)},
            "nonces": {a: web3.eth.get_transaction_count(a) for a in parties}}
