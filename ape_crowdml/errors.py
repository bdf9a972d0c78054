"""Errors a user can act on. Each message names what is wrong and what to do next.

They are ape exceptions: `ape crowdml …` prints one as a single `ERROR:` line, as ape's own
commands print an `Abort`, and exits with status 1 (status 2 stays click's, for a malformed
command line); in `ape console` they are ape errors like any other.
"""

from ape.exceptions import ApeException


class CrowdmlError(ApeException):
    """Base class: bad input, a refused call, or a failed reproducibility check."""


class SpecError(CrowdmlError):
    """The job spec (or the job file it names) is missing, malformed or does not match."""


class DataDigestMismatch(CrowdmlError):
    """A data or artifact file is missing or its keccak256 differs from the spec's digest."""


class EnvironmentMismatch(CrowdmlError):
    """This machine or process does not match the spec's pinned environment profile."""


class CanaryMismatch(CrowdmlError):
    """The spec's canary run gave a different digest here: do not deposit or commit."""


class BoardNotConfigured(CrowdmlError):
    """No task board is known for the connected network."""


class UnknownTask(CrowdmlError):
    """The task id does not exist on this board."""


class TaskRejected(CrowdmlError):
    """The board refuses the call (wrong phase, deadline passed, wrong deposit, …): found by the
    local checks or by simulating the transaction, before anything is sent."""


class InsufficientFunds(CrowdmlError):
    """The account cannot pay the value plus gas of a transaction."""


class MissingSecret(CrowdmlError):
    """The local store has no salt (or coin opening) for this task and account."""


class CannotSignUnattended(CrowdmlError):
    """The account would ask someone before signing, and nobody is there to answer."""


class PolicyRefused(CrowdmlError):
    """The worker's policy does not accept this task: job not allowlisted, deposit or reward."""


class ArtifactMissing(CrowdmlError):
    """The artifact store has no file for this digest, or the file does not match it."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
