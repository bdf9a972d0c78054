"""A worker's policy: which tasks it takes. A job file is code the worker will run, so the job's
source digest must be on the allowlist; the spec's environment profile must be a built-in one or
one the worker accepts, field for field; the deposit, reward and windows must be within bounds,
and the board's forfeit sink one the worker accepts. Everything here is checked before any
deposit is sent."""

from __future__ import annotations

from eth_utils import to_checksum_address

from .board import TaskInfo
from .config import WorkerPolicy
from crowdml_compute.digest import file_digest
from crowdml_compute.jobs import JobRegistry
from .errors import PolicyRefused, SpecError
from crowdml_compute.profile import check_profile
from crowdml_compute.spec import JobSpec, check_arithmetic


def allowed_job_digests(policy: WorkerPolicy, jobs: JobRegistry) -> dict[str, str]:
    """0x-digest -> a name for it. Entries of `accept_jobs` are digests or job names
    (`train_classifier` or `train_classifier.py`) in the worker's registry; an empty list accepts
    every job there: the shipped jobs and those of the configured folders."""
    if not policy.accept_jobs:
        return {digest: path.name for digest, path in jobs.by_digest.items()}
    allowed = {}
    for entry in policy.accept_jobs:
        if entry.startswith("0x"):
            allowed[entry.lower()] = entry
            continue
        try:
            path = jobs.named(entry)
        except SpecError as exc:
            raise PolicyRefused(f"allowlisted job: {exc}") from None
        allowed["0x" + file_digest(path).hex()] = entry
    return allowed


def check_policy(task: TaskInfo, spec: JobSpec, policy: WorkerPolicy, jobs: JobRegistry,
                 sink: str) -> None:
    """PolicyRefused (EnvironmentMismatch for the profile) with the first reason this worker must
    not take the task on a board whose forfeits go to `sink`."""
    if to_checksum_address(sink) not in {to_checksum_address(s) for s in policy.accept_sinks}:
        raise PolicyRefused(f"the board sends forfeits to {sink}, which is not among this "
                            "worker's accepted sinks (crowdml.worker.accept_sinks): whoever holds "
                            "it would profit from the task failing")
    for name in ("join", "commit", "reveal"):
        blocks = getattr(task, f"{name}_blocks")
        if blocks > policy.max_window_blocks:
            raise PolicyRefused(f"task {task.task_id}'s {name} window is {blocks} blocks, above "
                                f"this worker's maximum {policy.max_window_blocks}")
        # A window too short to act in makes an honest worker forfeit its deposit.
        if name != "join" and blocks < policy.min_window_blocks:
            raise PolicyRefused(f"task {task.task_id}'s {name} window is {blocks} blocks, below "
                                f"this worker's minimum {policy.min_window_blocks}")
    allowed = allowed_job_digests(policy, jobs)
    if spec.job_digest not in allowed:
        raise PolicyRefused(f"task {task.task_id} runs job {spec.job} ({spec.job_digest}), "
                            "which is not on this worker's allowlist; refusing to run its code")
    try:
        jobs.find(spec.job_digest, spec.job)
    except SpecError as exc:
        raise PolicyRefused(f"task {task.task_id}: {exc}") from None
    check_profile(spec.profile, policy.accept_profiles)
    try:
        check_arithmetic(spec)
    except SpecError as exc:
        raise PolicyRefused(f"task {task.task_id}: {exc}") from None
    if task.deposit > policy.max_deposit:
        raise PolicyRefused(f"task {task.task_id} asks a deposit of {task.deposit} wei, above "
                            f"this worker's maximum {policy.max_deposit}")
    share = task.reward // task.workers
    if share < policy.min_reward:
        raise PolicyRefused(f"task {task.task_id} pays {share} wei per worker, below this "
                            f"worker's minimum {policy.min_reward}")
