"""How long a task's job will take on this machine, and whether its commit window allows it.

The canary runs the job at its real shapes for a few steps of three epochs (the shipped
training jobs' default); its second epoch has no compilation in it (the first compiles, the
last runs into the final evaluation, which compiles too), so it gives this machine's time per
step, and the rest of the canary's time is the fixed cost (process start, jax import,
compilation, data, evaluation). The whole job is that fixed cost plus its steps at that rate: the spec's
`epochs` times its steps per epoch (the data's batches, or `steps_per_epoch` when smaller), as
the job reported them from the canary run.
"""

from __future__ import annotations

from dataclasses import dataclass

# The estimate must fit in this share of the commit window: the rest covers a slower moment
# of the machine, the commit transaction, and blocks mined faster than measured.
WINDOW_SHARE = 0.8
# Blocks looked back over to measure a chain's block time.
BLOCK_SAMPLE = 64


@dataclass(frozen=True)
class JobEstimate:
    seconds: float  # the whole job, here
    fixed: float  # of which: start-up, compilation, data
    per_step: float
    steps: int

    def __str__(self) -> str:
        return (f"about {self.seconds:.0f} s here ({self.steps} steps at {self.per_step:.3g} s, "
                f"plus {self.fixed:.0f} s to start)")


def job_estimate(hparams: dict, timing: dict, canary_seconds: float) -> JobEstimate | None:
    """The whole job's time from its canary's `timing` (JobResult.timing) and wall time; None
    when the job or its canary does not give what it takes (a canary of one epoch, a job that
    reports no steps, hyperparameters without `epochs`)."""
    ends = timing.get("epoch_ends") or []
    steps, batches = timing.get("steps_per_epoch"), timing.get("batches_in_data")
    epochs = hparams.get("epochs")
    if len(ends) < 3 or not steps or not batches or not isinstance(epochs, int):
        return None
    per_step = max(ends[1] - ends[0], 0.0) / steps  # the second epoch: compiled, not the last
    fixed = max(canary_seconds - per_step * steps * len(ends), 0.0)
    total = epochs * min(batches, hparams.get("steps_per_epoch") or batches)
    return JobEstimate(fixed + per_step * total, fixed, per_step, total)


def block_seconds(chain) -> float | None:
    """The chain's recent time per block, or None where blocks are mined on demand (ape's test
    chain) or too few to say."""
    if chain.provider.name == "test":
        return None
    head = chain.blocks.head
    back = min(BLOCK_SAMPLE, head.number)
    if back < 8:
        return None
    earlier = chain.blocks[head.number - back]
    seconds = (head.timestamp - earlier.timestamp) / back
    return seconds if seconds > 0 else None
