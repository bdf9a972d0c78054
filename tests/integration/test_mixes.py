"""Whole tasks played by separate processes, each with its own account, state folder and
working directory, sharing only an anvil node (block time 1 s) and the artifact store: a
requester, honest workers (`ape crowdml agent`) and deviating workers (actors/adversary.py).
Every party's payout must be the paper's clause for the seats' strategies, to the wei.

The default run plays three mixes; CROWDML_INTEGRATION_ALL=1 plays every one.
"""

import os

import pytest

from harness import HONEST, check_payouts, play

DEFAULT = {
    "honest": [HONEST, HONEST, HONEST],
    "crash": [HONEST, HONEST, "crash"],
    "junk-trivial": [HONEST, "junk", "trivial"],
}
MORE = {
    "junk": [HONEST, HONEST, "junk"],
    "noshow": [HONEST, HONEST, "noshow"],
    "copycat": [HONEST, HONEST, "copycat"],
    "late": [HONEST, HONEST, "late"],
    "two-honest-of-four": [HONEST, "crash", "junk", "late"],
}
MIXES = {**DEFAULT, **MORE} if os.environ.get("CROWDML_INTEGRATION_ALL") else DEFAULT
EXPECTED_PHASE = {"honest": "AGREED", "crash": "AGREED", "junk": "DISAGREED"}


@pytest.mark.parametrize("mix", list(MIXES))
def test_mix_pays_by_the_clauses(rehearsal, mix):
    played = play(rehearsal, mix, MIXES[mix])
    [outcome] = check_payouts(rehearsal.observer, played)
    assert outcome.phase == EXPECTED_PHASE.get(mix, "FAILED")
    if "crash" in MIXES[mix]:
        restarted = next(path for name, path in played.logs.items() if "restarted" in name)
        text = restarted.read_text()
        assert "from the stored salt" in text and "committed to" not in text, text
