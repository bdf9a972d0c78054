"""Errors a user can act on. Each message names what is wrong and what to do next; the CLI prints
it as one line (no traceback) and exits with status 2."""


class CrowdmlError(Exception):
    """Base class: bad input or a failed reproducibility check."""


class SpecError(CrowdmlError):
    """The job spec (or the job file it names) is missing, malformed or does not match."""


class DataDigestMismatch(CrowdmlError):
    """A data or artifact file is missing or its keccak256 differs from the spec's digest."""


class EnvironmentMismatch(CrowdmlError):
    """This machine or process does not match the spec's pinned environment profile."""


class CanaryMismatch(CrowdmlError):
    """The spec's canary run gave a different digest here: do not deposit or commit."""
