"""Load: one requester publishes TASKS tasks at once and three `ape crowdml agent` processes
take every one of them (each agent runs its jobs one at a time, in its warm job process:
`--warm-jobs`; tests/jobs/test_jobs_warm.py shows a warm process gives the cold digests). Nothing
may be lost: every task agrees, every party is paid its exact share, nothing stays owed.

A longer run, so off in `make test` (which stays nearer 20 minutes): CROWDML_LOAD_TASKS=5
runs 5 tasks (10 were part of make test until stop 8), CROWDML_LOAD_TASKS=50 the long run. Throughput and memory figures come
from bench/rehearsal.py, not from here.
"""

import os
import re

import pytest

from harness import HONEST, check_payouts, play

TASKS = int(os.environ.get("CROWDML_LOAD_TASKS", "0"))


def windows(tasks: int) -> dict[str, int]:
    """Blocks (seconds, at one a second) for `tasks` tasks: each agent checks every task before
    joining (about 4 s) and runs every job in turn (13 s cold alone, 40 to 90 s with three
    agents on a 2-core machine loaded by other work), so the join and commit windows grow with
    the tasks."""
    return {"join_blocks": 60 + 5 * tasks, "commit_blocks": 120 + 60 * tasks,
            "reveal_blocks": 120}


@pytest.mark.skipif(TASKS < 1, reason="a longer run: set CROWDML_LOAD_TASKS (e.g. 5 or 50)")
def test_agents_finish_every_task_of_a_load(rehearsal):
    played = play(rehearsal, f"load{TASKS}", [HONEST] * 3, tasks=TASKS, **windows(TASKS),
                  timeout=300 + 90 * TASKS, warm_jobs=True)
    assert len(played.tasks) == TASKS
    outcomes = check_payouts(rehearsal.observer, played)
    assert [o.phase for o in outcomes] == ["AGREED"] * TASKS
    for party, _ in played.workers:
        log = party.log("worker").read_text()
        for task in played.tasks:
            assert len(re.findall(rf"task {task}: claimed ", log)) == 1, log
