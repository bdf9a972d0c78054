"""A worker's policy: which tasks it takes. A job file is code the worker will run, so the job's
source digest must be on the allowlist; the spec's environment profile must be a built-in one or
one the worker accepts, field for field; the deposit and reward must be within bounds. Everything
here is checked before any deposit is sent."""

from __future__ import annotations

from pathlib import Path

from .board import TaskInfo
from .config import WorkerPolicy
from .digest import file_digest
from .errors import PolicyRefused
from .profile import check_profile
from .spec import JobSpec


def allowed_job_digests(policy: WorkerPolicy, jobs_folder: Path) -> dict[str, str]:
    """0x-digest -> a name for it. Entries of `accept_jobs` are digests or file names in
    `jobs_folder`; an empty list accepts every job file shipped in `jobs_folder`."""
    entries = policy.accept_jobs or sorted(p.name for p in jobs_folder.glob("*.py"))
    allowed = {}
    for entry in entries:
        if entry.startswith("0x"):
            allowed[entry.lower()] = entry
            continue
        path = jobs_folder / entry
        if not path.is_file():
            raise PolicyRefused(f"allowlisted job {entry} is not in {jobs_folder}")
        allowed["0x" + file_digest(path).hex()] = entry
    return allowed


def check_policy(task: TaskInfo, spec: JobSpec, policy: WorkerPolicy, jobs_folder: Path) -> None:
    """PolicyRefused (EnvironmentMismatch for the profile) with the first reason this worker must
    not take the task."""
    allowed = allowed_job_digests(policy, jobs_folder)
    if spec.job_digest not in allowed:
        raise PolicyRefused(f"task {task.task_id} runs job {spec.job} ({spec.job_digest}), "
                            "which is not on this worker's allowlist; refusing to run its code")
    check_profile(spec.profile, policy.accept_profiles)
    if task.deposit > policy.max_deposit:
        raise PolicyRefused(f"task {task.task_id} asks a deposit of {task.deposit} wei, above "
                            f"this worker's maximum {policy.max_deposit}")
    share = task.reward // task.workers
    if share < policy.min_reward:
        raise PolicyRefused(f"task {task.task_id} pays {share} wei per worker, below this "
                            f"worker's minimum {policy.min_reward}")
