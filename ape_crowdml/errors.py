"""Errors a user can act on. Each message names what is wrong and what to do next.

`ape crowdml …` prints any of them as a single `ERROR:` line, as ape's own commands print an
`Abort`, and exits with status 1 (status 2 stays click's, for a malformed command line). They are
plain exceptions, not ape's: the compute side's (crowdml_compute/errors.py) are raised in job
environments that have no ape.
"""

# The base and the compute side's errors live with the compute code, which runs without ape.
from crowdml_compute.errors import (CanaryMismatch, CrowdmlError, DataDigestMismatch,  # noqa: F401
                             EnvironmentMismatch, EnvironmentMissing, SpecError, first_line)


class BoardNotConfigured(CrowdmlError):
    """No task board is known for the connected network."""


class UnknownTask(CrowdmlError):
    """The task id does not exist on this board."""


class UnknownOrder(CrowdmlError):
    """The order id does not exist on this market."""


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


class StateNotWritable(CrowdmlError):
    """The state folder cannot be written: the secrets that must be stored before a
    transaction cannot be, so the transaction is not sent."""


class ModelNotServedYet(CrowdmlError):
    """A model purchase's seller may still serve the evaluation's model: the job waits."""


class UpgradedSinceJoin(CrowdmlError):
    """crowdml was upgraded since this worker joined a task: the install's compute code is not
    the one the task's spec names, so its job would be refused and the deposit lost."""
