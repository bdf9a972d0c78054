"""Whole tasks played by separate processes, each with its own account, state folder and
working directory, sharing only an anvil node (block time 1 s) and the artifact store: a
requester, honest workers (`ape crowdml agent`) and deviating workers (actors/adversary.py).
Every party's payout must be the paper's clause for the seats' strategies, to the wei.

Each mix has a board of its own (so that no agent takes another mix's seat), and up to three
mixes run side by side (more would only queue their jobs on a 2-core machine). The default run
plays one, the mix with the most clauses (an honest worker, a junk one, a trivial one: d/2
back, d/2 lost, all of d lost), to keep `make test` short; the honest and crash mixes' clauses
are also played in one process (tests/board, tests/plugin) and across processes on anvil
(tests/plugin/test_stranger.py, test_agent_recovery.py). CROWDML_INTEGRATION_ALL=1 plays every
mix.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from eth_utils import keccak

from harness import HONEST, check_payouts, play

DEFAULT = {
    "junk-trivial": [HONEST, "junk", "trivial"],
}
MORE = {
    "honest": [HONEST, HONEST, HONEST],
    "crash": [HONEST, HONEST, "crash"],
    "junk": [HONEST, HONEST, "junk"],
    "noshow": [HONEST, HONEST, "noshow"],
    "copycat": [HONEST, HONEST, "copycat"],
    "late": [HONEST, HONEST, "late"],
    "four-seats": [HONEST, "crash", "junk", "late"],
}
MIXES = {**DEFAULT, **MORE} if os.environ.get("CROWDML_INTEGRATION_ALL") else DEFAULT
SIDE_BY_SIDE = 3
EXPECTED_PHASE = {"honest": "AGREED", "crash": "AGREED", "junk": "DISAGREED"}


@pytest.fixture(scope="module")
def played(rehearsal):
    """The mixes, three at a time in the background; each test waits for its own."""
    with ThreadPoolExecutor(SIDE_BY_SIDE) as pool:
        futures = {mix: pool.submit(play, rehearsal, mix, strategies, commit_blocks=300,
                                   timeout=900)
                   for mix, strategies in MIXES.items()}
        yield futures


@pytest.mark.parametrize("mix", list(MIXES))
def test_mix_pays_by_the_clauses(rehearsal, played, mix):
    result = played[mix].result()
    [outcome] = check_payouts(rehearsal.observer, result)
    assert outcome.phase == EXPECTED_PHASE.get(mix, "FAILED")
    [task] = result.tasks
    model = result.requester.folder / f"model-{task}.crowdml"
    if outcome.phase == "AGREED":
        # The requester holds the model, from a worker's own bucket: sealed to its key there,
        # opened and checked against the board's result here.
        board = rehearsal.observer.board(result.board)
        assert keccak(model.read_bytes()) == bytes(board.functions.result_of(task).call())
    else:
        assert not model.exists()
    if "crash" in MIXES[mix]:
        # The restarted agent revealed from the store the killed process left, without rerunning.
        restarted = next(path for name, path in result.logs.items() if "restarted" in name)
        text = restarted.read_text()
        assert "from the stored salt" in text and "committed to" not in text, text
