"""Train a small convolutional classifier; the result is its parameters.

crowdml job (contract in crowdml_compute/runner.py): `run(hparams, data, keys, report) -> bytes`.
Hyperparameters are the fields of `Config`; the result is `encode_pytree({"params": params})`.

Data: the spec's dataset (images of shape (H, W) or (H, W, C), e.g. scikit-learn's 8×8 digits),
or, when `synthetic` is set, a CIFAR-shaped set (32×32×3, 10 classes) generated inside the job
from `synthetic.seed` and refused unless the keccak256 of its canonical encoding is
`synthetic.digest` (for throughput figures without shipping 150 MB of images).

Training goes through crowdml_compute/parallel.py: each batch is cut into `micro_batches`
micro-batches whose gradients are summed in a fixed order, so a worker may use any number of
devices dividing `micro_batches` and gets the same digest.

Every random draw comes from the coin, through counters taken from `keys` in this order: one for
parameter init; then per epoch one for the shuffle and one per step for dropout (micro-batch k of
a step uses `draw(step key, k)`). The synthetic set's seed is data, not randomness of the run:
every worker must generate the same images.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from pydantic import Field, model_validator

from crowdml_compute.digest import encode_pytree, keccak_digest
from crowdml_compute.spec import Bytes32Hex, HParams
from crowdml_compute.errors import DataDigestMismatch, SpecError
from crowdml_compute.exact import EXACT_SLICES, MAX_SLICES, Arithmetic
from crowdml_compute.training import (eval_step, fit, train_epoch,  # noqa: F401 - bench/ times
                                      train_step)  # the steps through the job module

CANARY_STEPS = 3
CIFAR_SHAPE = (32, 32, 3)
CIFAR_CLASSES = 10
NOISE = 1.0  # standard deviation of the per-image noise around its class's template


class Synthetic(HParams):
    """A generated CIFAR-shaped set: the seed makes it, the digest pins it."""

    seed: int = Field(ge=0)
    n_train: int = Field(gt=0)
    n_test: int = Field(gt=0)
    digest: Bytes32Hex  # keccak256 of encode_pytree of the four arrays, see synthetic_digest


class Config(HParams):
    features: tuple[int, ...] = (16, 32)  # channels of each conv block
    dense: int = Field(64, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(10, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0)  # None: all n_train // batch_size
    micro_batches: int = Field(4, gt=0)  # K: a batch's fixed split; workers use devices dividing K
    synthetic: Synthetic | None = None  # train on generated CIFAR-shaped data instead
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


def canary(config: Config) -> dict:
    """The canary: a few steps of each of three epochs, at the real model, batch and data
    shapes (the second epoch, compiled already and ended before the final evaluation, times
    a step for the worker's estimate)."""
    return {"epochs": 3, "steps_per_epoch": CANARY_STEPS}


def synthetic_cifar(seed: int, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Ten smooth 32×32×3 class templates plus per-image noise, float32; labels uint8. numpy's
    PCG64 stream for a seed is fixed (and numpy's version is pinned by the profile)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    coarse = rng.standard_normal((CIFAR_CLASSES, 8, 8, CIFAR_SHAPE[2]))
    templates = coarse.repeat(4, axis=1).repeat(4, axis=2)  # 8×8 blocks → 32×32
    n = n_train + n_test
    y = rng.integers(0, CIFAR_CLASSES, n).astype(np.uint8)
    x = (templates[y] + NOISE * rng.standard_normal((n,) + CIFAR_SHAPE)).astype(np.float32)
    return {"x_train": x[:n_train], "y_train": y[:n_train],
            "x_test": x[n_train:], "y_test": y[n_train:]}


def synthetic_digest(data: dict[str, np.ndarray]) -> str:
    """0x-keccak256 of the set's canonical encoding: what `Synthetic.digest` must be."""
    return "0x" + keccak_digest(encode_pytree(data)).hex()


def load_data(config: Config, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The spec's dataset, or the synthetic one after checking its digest."""
    if config.synthetic is None:
        return data
    spec = config.synthetic
    generated = synthetic_cifar(spec.seed, spec.n_train, spec.n_test)
    if synthetic_digest(generated) != spec.digest:
        raise DataDigestMismatch(f"the synthetic set of seed {spec.seed} has keccak256 "
                                 f"{synthetic_digest(generated)}, the spec expects {spec.digest}")
    return generated


class ConvNet(nn.Module):
    """Per feature count: 3×3 conv → relu → 2×2 average pool; then Dense → relu → dropout →
    Dense readout."""

    features: tuple[int, ...]
    dense: int
    classes: int
    dropout: float
    numerics: Arithmetic = Arithmetic()

    @nn.compact
    def __call__(self, x, *, train: bool):
        for width in self.features:
            x = nn.relu(self.numerics.Conv(width, (3, 3))(x))
            x = self.numerics.avg_pool(x, 2)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(self.numerics.Dense(self.dense)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return self.numerics.Dense(self.classes)(x)


@lru_cache
def make_trainer(config: Config, classes: int) -> tuple[ConvNet, optax.GradientTransformation]:
    """The model and optimizer for a configuration, built once per process (both are static
    parts of TrainState: fresh objects would recompile train_epoch on every run)."""
    model = ConvNet(features=config.features, dense=config.dense, classes=classes,
                    dropout=config.dropout, numerics=config.numerics)
    return model, optax.adam(config.learning_rate)


def images(a: np.ndarray):
    """float32 NHWC: a missing channel axis (grey images) becomes one channel."""
    a = np.asarray(a, np.float32)
    return jnp.asarray(a[..., None] if a.ndim == 3 else a)


def run(hparams: dict, data: dict[str, np.ndarray], keys, report) -> bytes:
    config = Config(**hparams)
    data = load_data(config, data)
    x_train, y_train = images(data["x_train"]), jnp.asarray(data["y_train"], jnp.int32)
    x_test, y_test = images(data["x_test"]), jnp.asarray(data["y_test"], jnp.int32)
    if x_train.ndim != 4:
        raise SpecError(f"x_train has shape {tuple(data['x_train'].shape)}, not images")
    config.numerics.check_inputs(x_train=data["x_train"], x_test=data["x_test"])
    classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    model, optimizer = make_trainer(config, classes)
    return fit(config, model, optimizer, x_train, y_train, x_test, y_test, keys, report)
