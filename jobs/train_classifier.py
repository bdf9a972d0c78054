"""Train an MLP classifier with optax on a labelled dataset; the result is its parameters.

crowdml job (contract in crowdml_compute/runner.py): `run(hparams, data, keys, report) -> bytes`.
Hyperparameters are the fields of `Config`. The result is `encode_pytree({"params": params})`;
`jobs/evaluate_classifier.py` evaluates it.

Every random draw comes from the coin, through counters taken from `keys` in this order:
one for parameter init; then per epoch one for the shuffle permutation and one per step for
dropout (micro-batch k of a step drops out with `draw(step key, k)`). Steps per epoch = n_train // batch_size (the remainder of each shuffle is skipped), or
`steps_per_epoch` when smaller: the canary's few steps at the real model and batch shapes.

Each step's batch is cut into `micro_batches` micro-batches whose gradients are summed in a fixed
order (crowdml_compute/parallel.py): the worker may run it on any number of devices dividing
`micro_batches`, with one digest.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from pydantic import Field, model_validator

from crowdml_compute.exact import EXACT_SLICES, MAX_SLICES, Arithmetic
from crowdml_compute.spec import HParams
from crowdml_compute.training import (eval_step, fit, train_epoch,  # noqa: F401 - bench/ times
                                      train_step)  # the steps through the job module

SGD_MOMENTUM = 0.9
CANARY_STEPS = 3


class Config(HParams):
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.1, ge=0, lt=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1)  # sgd only; default SGD_MOMENTUM
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(20, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0)  # None: all n_train // batch_size
    micro_batches: int = Field(1, gt=0)  # K: a batch's fixed split; workers use devices dividing K
    # exact: products and sums in integers, the same bits on any machine (crowdml_compute/exact.py);
    # float: plain float32, which agrees only on identical, pinned machines (cpu-exact).
    arithmetic: Literal["float", "exact"] = "exact"
    exact_slices: int = Field(EXACT_SLICES, ge=1, le=MAX_SLICES)  # 7-bit slices per operand

    @property
    def numerics(self) -> Arithmetic:
        return Arithmetic(self.arithmetic, self.exact_slices)

    @model_validator(mode="after")
    def _batch_splits(self):
        if self.batch_size % self.micro_batches:
            raise ValueError(f"batch_size {self.batch_size} does not split into "
                             f"{self.micro_batches} micro_batches")
        return self

    @model_validator(mode="before")
    @classmethod
    def _momentum_for_sgd_only(cls, data):
        """One form per run: adam takes no momentum, sgd always states its own."""
        if isinstance(data, dict):
            if data.get("optimizer", "adam") != "sgd" and data.get("momentum") is not None:
                raise ValueError("momentum applies to the sgd optimizer only")
            if data.get("optimizer") == "sgd" and data.get("momentum") is None:
                data = {**data, "momentum": SGD_MOMENTUM}
        return data


def canary(config: Config) -> dict:
    """The canary: a few steps of each of three epochs, at the real model, batch and data
    shapes (the second epoch, compiled already and ended before the final evaluation, times
    a step for the worker's estimate)."""
    return {"epochs": 3, "steps_per_epoch": CANARY_STEPS}


class MLP(nn.Module):
    """Dense → relu → dropout per hidden layer, then a Dense readout: layers Dense_0 … Dense_k."""

    hidden: tuple[int, ...]
    classes: int
    dropout: float
    numerics: Arithmetic = Arithmetic()

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(self.numerics.Dense(width)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return self.numerics.Dense(self.classes)(x)


@lru_cache
def make_trainer(config: Config, classes: int) -> tuple[MLP, optax.GradientTransformation]:
    """The model and optimizer for a configuration, built once per process: both are static
    parts of TrainState, so fresh objects would recompile train_epoch on every run."""
    model = MLP(hidden=config.hidden, classes=classes, dropout=config.dropout,
                numerics=config.numerics)
    if config.optimizer == "adam":
        return model, optax.adam(config.learning_rate)
    return model, optax.sgd(config.learning_rate, momentum=config.momentum)


def prepare(data: dict[str, np.ndarray]):
    """Flattened float32 inputs and int32 labels, as device arrays."""
    def xs(a):
        return jnp.asarray(a.reshape(len(a), -1), jnp.float32)

    return (xs(data["x_train"]), jnp.asarray(data["y_train"], jnp.int32),
            xs(data["x_test"]), jnp.asarray(data["y_test"], jnp.int32))


def run(hparams: dict, data: dict[str, np.ndarray], keys, report) -> bytes:
    config = Config(**hparams)
    x_train, y_train, x_test, y_test = prepare(data)
    config.numerics.check_inputs(x_train=data["x_train"], x_test=data["x_test"])
    classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    model, optimizer = make_trainer(config, classes)
    return fit(config, model, optimizer, x_train, y_train, x_test, y_test, keys, report)
