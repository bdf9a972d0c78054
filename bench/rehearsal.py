"""Rehearsal benchmark, on an anvil node of its own (block time 1 s): run
`.venv/bin/python bench/rehearsal.py [--tasks 10]` from the repository root.

1. One full task, publish → every claim, n = 3 `ape crowdml agent` processes, the tiny job
   (tests/integration's), split by the chain's own clock (block timestamps, 1 s resolution)
   into its phases, and against the job's own time.
2. The job: one cold run in a fresh process as a worker runs it (interpreter, imports, sealed
   environment, checks, compile, train) against the same job run again in one process, timed
   piece by piece, with the digests of both, which must be equal (`--job-only`: just this).
3. A load: TASKS tasks published at once, taken by three agents: tasks per minute (publish of
   the first → the requester's last claim) and each agent's peak resident memory, alone and
   with its job processes (sampled every 0.25 s).

Figures on a shared machine are noisy; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import HONEST, TINY_HPARAMS, Anvil, Rehearsal, check_payouts, play  # noqa: E402

COIN = bytes.fromhex("c0" * 32)


def event_times(observer, played, task: int) -> dict[str, int]:
    """Block timestamp of each step of `task` (the last of each kind)."""
    board = observer.board(played.board)
    stamp = {}

    def at(event: str) -> int:
        logs = observer.logs(board, event, task)
        return max(observer.web3.eth.get_block(log.blockNumber).timestamp for log in logs)

    for event in ("Published", "Joined", "CoinFixed", "Committed", "Revealed", "Settled",
                  "Claimed"):
        stamp[event] = at(event)
    return stamp


def one_task(rehearsal) -> None:
    played = play(rehearsal, "bench-one", [HONEST] * 3)
    check_payouts(rehearsal.observer, played)
    t = event_times(rehearsal.observer, played, played.tasks[0])
    steps = [("publish → roster full (each agent checks the task, then joins)", "Published", "Joined"),
             ("roster full → coin released (requester)", "Joined", "CoinFixed"),
             ("coin → last commit (the job, then the commit)", "CoinFixed", "Committed"),
             ("last commit → last reveal", "Committed", "Revealed"),
             ("last reveal → settled", "Revealed", "Settled"),
             ("settled → last claim (artifact published first)", "Settled", "Claimed")]
    print(f"one task, n = 3, tiny job {TINY_HPARAMS}, anvil block time 1 s")
    for label, start, end in steps:
        print(f"  {label:<62} {t[end] - t[start]:>4} s")
    total = t["Claimed"] - t["Published"]
    job = t["Committed"] - t["CoinFixed"]
    print(f"  {'publish → last claim, on chain':<62} {total:>4} s "
          f"(job phase {job} s, chain and agents {total - job} s)")
    print(f"  {'publish call → requester saw every claim, wall clock':<62} "
          f"{played.ended - played.started:>6.1f} s")


def job_costs(folder: Path) -> None:
    """Cold run_job vs the job twice in one process under the same profile."""
    from crowdml_compute.data import export_digits
    from crowdml_compute.profile import environment_for
    from crowdml_compute.runner import run_job
    from crowdml_compute.spec import make_spec, save_spec

    data = folder / "digits.npz"
    export_digits(data)
    spec = make_spec(REPO / "jobs" / "train_classifier.py", data, TINY_HPARAMS)
    spec_file = save_spec(spec, folder / "spec.json")
    cold = []
    for _ in range(3):
        start = time.perf_counter()
        result = run_job(spec, COIN)
        cold.append(time.perf_counter() - start)
    from crowdml_compute.child import python_command

    python, extra = python_command(spec.profile, folder)  # the profile's job stack
    child = subprocess.run(
        [*python, __file__, "--warm-child", str(spec_file)],
        env=environment_for(spec.profile, {**os.environ, "PYTHONPATH": str(REPO), **extra}),
        capture_output=True, text=True, check=True)
    warm = json.loads(child.stdout.strip().splitlines()[-1])
    print("the tiny job, one worker's run")
    print(f"  {'cold run_job in a fresh process (best of 3)':<62} {min(cold):>6.2f} s")
    print(f"  {'  of which: jax/flax/optax import':<62} {warm['import']:>6.2f} s")
    print(f"  {'  first run in that process (checks, data, compile, train)':<62} {warm['first']:>6.2f} s")
    print(f"  {'second run in the same process, by piece:':<62}")
    for piece, label in (("checks", "environment checks (hash jaxlib's native files)"),
                         ("data", "load and verify the data"), ("run", "the job's run (warm)")):
        print(f"  {'  ' + label:<62} {warm[piece]:>6.2f} s")
    same = warm["digest"] == "0x" + result.digest.hex()
    print(f"  digests: cold 0x{result.digest.hex()[:16]}…, warm {warm['digest'][:18]}…: "
          f"{'equal' if same else 'DIFFERENT'}")


def warm_child(spec_file: str) -> None:
    """In a sealed process (the profile's environment): import, run the job once as `execute`
    does, then time the second run's pieces: the environment checks (which hash jaxlib's native
    files), loading the data, and the job's own `run`."""
    from crowdml_compute.profile import apply_environment
    from crowdml_compute.spec import load_spec

    spec = load_spec(spec_file)
    apply_environment(spec.profile)
    start = time.perf_counter()
    import flax  # noqa: F401
    import jax  # noqa: F401
    import optax  # noqa: F401
    imported = time.perf_counter() - start
    from crowdml_compute.data import load_dataset
    from crowdml_compute.digest import keccak_digest
    from crowdml_compute.keys import KeyStream
    from crowdml_compute.profile import check_environment, check_process
    from crowdml_compute.runner import Report, execute, load_job

    start = time.perf_counter()
    first = execute(spec, COIN).digest
    times = {"import": imported, "first": time.perf_counter() - start}
    start = time.perf_counter()
    check_environment(spec, native=False)
    check_process(spec.profile)
    times["checks"] = time.perf_counter() - start
    start = time.perf_counter()
    data = load_dataset(spec.data_uri, spec.data_digest)
    times["data"] = time.perf_counter() - start
    job = load_job(spec)
    start = time.perf_counter()
    artifact = job.run(dict(spec.hparams), data, KeyStream(COIN), Report(False))
    times["run"] = time.perf_counter() - start
    assert keccak_digest(artifact) == first, "the warm run changed the digest"
    print(json.dumps({**times, "digest": "0x" + first.hex()}))


def load(rehearsal, tasks: int, warm_jobs: bool) -> None:
    from test_load import windows

    played = play(rehearsal, f"bench-load{tasks}", [HONEST] * 3, tasks=tasks, **windows(tasks),
                  timeout=300 + 90 * tasks, sample_memory=True, warm_jobs=warm_jobs)
    outcomes = check_payouts(rehearsal.observer, played)
    assert all(o.phase == "AGREED" for o in outcomes)
    minutes = (played.ended - played.started) / 60
    jobs = "warm job processes" if warm_jobs else "a fresh process per job"
    print(f"load: {tasks} tasks × 3 agents ({jobs}), every payout exact")
    print(f"  {'publish of the first → requester saw every claim':<62} {minutes * 60:>6.1f} s: "
          f"{tasks / minutes:.1f} tasks/min")
    for name, (own, family) in played.peak_rss.items():
        print(f"  peak memory {name:<50} {own / 2**20:>6.0f} MiB alone, "
              f"{family / 2**20:.0f} MiB with its job process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10, help="tasks in the load run")
    parser.add_argument("--job-only", action="store_true", help="only the job's costs (2.)")
    parser.add_argument("--cold-jobs", action="store_true",
                        help="load run with a fresh process per job (default: --warm-jobs)")
    parser.add_argument("--warm-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_child:
        warm_child(args.warm_child)
        return
    with tempfile.TemporaryDirectory(prefix="crowdml-bench-") as tmp:
        root = Path(tmp)
        print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
        job_costs(root)
        if args.job_only:
            return
        anvil = Anvil(root)
        try:
            rehearsal = Rehearsal(root, anvil)
            one_task(rehearsal)
            load(rehearsal, args.tasks, warm_jobs=not args.cold_jobs)
        finally:
            anvil.stop()
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
