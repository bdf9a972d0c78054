"""The paper's payoffs, measured on chain: every clause, Table I (n = 2) and
Table II (coalitions), with exact wei and the board always solvent."""

import pytest
from board_support import AGREED_JUNK, DEPOSIT as d, HIDE, JUNK, REWARD as r, SKIP, TRIVIAL, TRUE

AGREED, DISAGREED, FAILED = 6, 7, 8

# Table I: (row, column) -> (row payoff, column payoff); σe = SKIP, σt = TRUE, σf = JUNK.
TABLE_I = {
    (SKIP, SKIP): (-d, -d),
    (SKIP, TRUE): (-d, -d // 2),
    (SKIP, JUNK): (-d, -d // 2),
    (TRUE, SKIP): (-d // 2, -d),
    (TRUE, TRUE): (r // 2, r // 2),
    (TRUE, JUNK): (-d // 2, -d // 2),
    (JUNK, SKIP): (-d // 2, -d),
    (JUNK, TRUE): (-d // 2, -d // 2),
    (JUNK, JUNK): (-d // 2, -d // 2),
}


@pytest.mark.parametrize("row,column", TABLE_I)
def test_table_one(play, workers, row, column):
    played = play([row, column], worker_accounts=workers)
    assert (played.payoff[workers[0].address], played.payoff[workers[1].address]) == TABLE_I[row, column]


@pytest.mark.parametrize("failure", [SKIP, HIDE, TRIVIAL])
def test_every_failure_counts_as_no_submission(play, workers, failure):
    """Not committing, not opening and opening an E_ck result are one strategy, σe."""
    played = play([failure, TRUE], worker_accounts=workers)
    assert played.outcome == FAILED
    assert played.payoff[workers[0].address] == -d
    assert played.payoff[workers[1].address] == -d // 2


# Table II: coalition strategies as (true p, junk q, nothing l); σ3's junk is
# pre-agreed and shared. The expected payoff is the table's formula.
SIGMAS = {
    "σ1": dict(true=0, junk=0, agreed_junk=0, skip=2),
    "σ2": dict(true=2, junk=0, agreed_junk=0, skip=0),
    "σ3": dict(true=0, junk=0, agreed_junk=2, skip=0),
    "σ4": dict(true=1, junk=0, agreed_junk=0, skip=1),
    "σ5": dict(true=0, junk=1, agreed_junk=0, skip=1),
    "σ6": dict(true=1, junk=1, agreed_junk=0, skip=0),
    "σ7": dict(true=1, junk=1, agreed_junk=0, skip=1),  # needs k = 3, so n = 4
}
OUTSIDERS = {"I": SKIP, "II": JUNK, "III": TRUE}


def table_two(sigma: str, situation: str, n: int) -> int:
    s = SIGMAS[sigma]
    k = sum(s.values())
    submitted = s["true"] + s["junk"] + s["agreed_junk"]
    if sigma == "σ2" and situation == "III":
        return k * r // n
    return -submitted * d // 2 - s["skip"] * d


@pytest.mark.parametrize("situation", OUTSIDERS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_table_two_coalitions(play, workers, sigma, situation):
    s = SIGMAS[sigma]
    coalition = [TRUE] * s["true"] + [JUNK] * s["junk"] + [AGREED_JUNK] * s["agreed_junk"] + [SKIP] * s["skip"]
    strategies = coalition + [OUTSIDERS[situation]]
    n = len(strategies)
    played = play(strategies, worker_accounts=workers)
    gained = sum(played.payoff[w.address] for w in workers[: len(coalition)])
    assert gained == table_two(sigma, situation, n)


def test_agreed_pays_reward_share_and_returns_dust_to_requester(play, workers, requester):
    reward = 10**16 + 1  # not divisible by 3: 2 wei of dust
    played = play([TRUE, TRUE, TRUE], reward=reward, worker_accounts=workers)
    assert played.outcome == AGREED
    for w in workers[:3]:
        assert played.payoff[w.address] == reward // 3
    assert played.payoff[requester.address] == -reward + 2


def test_disagreed_costs_everyone_half_and_refunds_requester(play, workers, requester, board, sink):
    played = play([TRUE, TRUE, JUNK], worker_accounts=workers)
    assert played.outcome == DISAGREED
    assert [played.payoff[w.address] for w in workers[:3]] == [-d // 2] * 3
    assert played.payoff[requester.address] == 0
    assert board.forfeited() == 3 * d // 2
    before = sink.balance
    board.sweep(sender=workers[0])
    assert sink.balance - before == 3 * d // 2
    assert board.balance == 0


def test_failed_mixes_penalties(play, workers, requester, board):
    played = play([TRUE, JUNK, SKIP, HIDE, TRIVIAL], worker_accounts=workers)
    assert played.outcome == FAILED
    assert [played.payoff[w.address] for w in workers[:5]] == [-d // 2, -d // 2, -d, -d, -d]
    assert played.payoff[requester.address] == 0
    assert board.forfeited() == 5 * d - 2 * (d // 2)


def test_nobody_commits(play, workers, board):
    played = play([SKIP, SKIP, SKIP], worker_accounts=workers)
    assert played.outcome == FAILED
    assert board.forfeited() == 3 * d


def test_coalition_of_all_agreeing_on_junk_is_paid(play, workers):
    """The paper's stated limit: nothing protects against all n agreeing on junk."""
    played = play([AGREED_JUNK, AGREED_JUNK], worker_accounts=workers)
    assert played.outcome == AGREED
