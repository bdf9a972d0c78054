"""Errors of the compute side, and the base of every crowdml error.

Plain Python exceptions: a job runs in its own environment (jobenv.py), which has no ape. The
chain side's errors (ape_crowdml.errors) derive from the same `CrowdmlError`, and `ape crowdml …`
prints any of them as one `ERROR:` line.
"""


class CrowdmlError(Exception):
    """Base class: bad input, a refused call, or a failed reproducibility check."""


class SpecError(CrowdmlError):
    """The job spec (or the job file it names) is missing, malformed or does not match."""


class DataDigestMismatch(CrowdmlError):
    """A data or artifact file is missing or its keccak256 differs from the spec's digest."""


class EnvironmentMismatch(CrowdmlError):
    """This machine or process does not match the spec's pinned environment profile."""


class EnvironmentMissing(EnvironmentMismatch):
    """No job environment for the profile's stack on this machine yet: the worker can build
    one (`ape crowdml job-env create`), so a task refused for it is worth checking again."""


class CanaryMismatch(CrowdmlError):
    """The spec's canary run gave a different digest here: do not deposit or commit."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
