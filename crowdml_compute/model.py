"""A delivered model, ready to use: the Flax module its job built, its parameters, and
`predict`. Imports nothing of ape: it runs wherever jax and flax do (the job environment, a
notebook, a serving process).

    from crowdml_compute.model import load_model          # in a job environment: it needs jax
    model = load_model("model.crowdml", "spec.json")     # what `ape crowdml fetch` wrote
    labels = model.predict(x_test)                       # class per row, as the job evaluates
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpecError
from .spec import JobSpec, load_spec


@dataclass(frozen=True)
class Model:
    module: Any  # the job's flax.linen Module (its MLP or ConvNet), in the spec's arithmetic
    params: dict  # the trained parameters: the tree `apply` takes under "params"
    spec: JobSpec

    def apply(self, x):
        """The logits for a batch `x`, shaped as the job's inputs (inference: no dropout)."""
        import jax.numpy as jnp

        return self.module.apply({"params": self.params}, jnp.asarray(x, jnp.float32),
                                 train=False)

    def predict(self, x):
        """The class of each row of `x`."""
        import numpy as np

        return np.asarray(self.apply(x).argmax(-1))


def load_model(path: str | Path, spec: JobSpec | str | Path,
               job_folders: Sequence[str | Path] = ()) -> Model:
    """The model in `path` (a training task's result, as `fetch` writes it) rebuilt with the
    module of the job `spec` names: the job file is found by its digest among the shipped jobs
    and `job_folders`, and must define `make_trainer(config, classes)` (the shipped training
    jobs do). SpecError when it does not, or when the file is not a model."""
    from .digest import decode_result
    from .jobs import load_job

    spec = spec if isinstance(spec, JobSpec) else load_spec(spec)
    tree = decode_result(Path(path).read_bytes())
    if not isinstance(tree, dict) or "params" not in tree:
        raise SpecError(f"{path} is not a model's parameters (an evaluation's bitstring?)")
    params = tree["params"]
    job = load_job(spec, job_folders)
    if not hasattr(job, "make_trainer"):
        raise SpecError(f"job {spec.job} builds no model (it has no make_trainer)")
    readout = sorted((name for name in params if name.startswith("Dense_")),
                     key=lambda name: int(name.removeprefix("Dense_")))
    if not readout:
        raise SpecError(f"{path} has no Dense readout layer")
    classes = int(params[readout[-1]]["kernel"].shape[-1])
    module, _ = job.make_trainer(job.Config(**spec.hparams), classes)
    return Model(module, params, spec)
