"""Evaluate a trained classifier (an MLP of train_classifier.py or a ConvNet of train_conv.py)
on a coin-chosen subset of the test set (the paper's model-evaluation instance); the result is
the correctness bitstring.

crowdml job (contract in crowdml_compute/runner.py): `run(hparams, data, keys, report) -> bytes`.
Hyperparameters are the fields of `Config`: the model is an artifact of a training job (its
`encode_pytree({"params": …})` bytes), named by keccak256 and verified like the data. In a model
purchase the worker opens its sealed copy into the data cache before the job starts; a round the
seller did not serve (the chain says so), or offered bytes that are no model of the training
jobs, are scored as no model: every bit 0.
Counter 0 draws the subset: the first `subset_size` entries of a permutation of the test set. Bit
i of the result is 1 when subset sample i is classified right; the result is `encode_bits(bits)`,
so the contract can count the ones.

The forward pass is written out from the parameters rather than imported from the training
jobs (a job's behaviour must be fixed by its own source, whose keccak256 the spec pins): each
Conv_i (3×3, SAME) → relu → 2×2 average pool, then flatten, then Dense_0 … Dense_k with relu
between, as train_conv's ConvNet and (without Conv_i layers) train_classifier's MLP build
them. With `arithmetic: exact` (the default) every product and sum is exact
(crowdml_compute/exact.py), so a correctness bit cannot flip between machines.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from crowdml_compute.data import read_verified, unserved_model
from crowdml_compute.digest import decode_pytree, encode_bits
from crowdml_compute.errors import SpecError
from crowdml_compute.exact import EVALUATION_SLICES, MAX_SLICES, Arithmetic
from crowdml_compute.spec import Bytes32Hex, HParams


class Config(HParams):
    model_uri: str
    model_digest: Bytes32Hex  # keccak256 of the model file
    subset_size: int = Field(gt=0)
    arithmetic: Literal["float", "exact"] = "exact"
    exact_slices: int = Field(EVALUATION_SLICES, ge=1, le=MAX_SLICES)  # 7-bit slices per operand


def layers(params: dict, kind: str) -> list[dict]:
    """The `kind`_i layers (Conv or Dense) in index order (a plain sort would put Dense_10
    before Dense_2)."""
    names = [name for name in params if name.startswith(kind + "_")]
    return [params[name] for name in sorted(names, key=lambda n: int(n.removeprefix(kind + "_")))]


def check_model(params: dict) -> None:
    unknown = sorted(name for name in params if not name.startswith(("Conv_", "Dense_")))
    if unknown or not layers(params, "Dense"):
        raise SpecError(f"the model is not an MLP or ConvNet of the shipped training jobs "
                        f"(layers {', '.join(sorted(params))})")


def offered_params(config: Config) -> dict | None:
    """The offered model's parameters, or None if its bytes (whose digest matched, so the same
    on every worker) are no model of the shipped training jobs."""
    model = read_verified(config.model_uri, config.model_digest)
    try:
        params = decode_pytree(model)["params"]
        check_model(params)
    except Exception:  # noqa: BLE001 - any failure here is the verified bytes', on every worker
        return None
    return params


@partial(jax.jit, static_argnames=("numerics",))
def eval_step(convs, denses, x, y, *, numerics: Arithmetic):
    if convs:
        x = x[..., None] if x.ndim == 3 else x
        for layer in convs:
            x = numerics.avg_pool(jax.nn.relu(numerics.conv(x, layer)), 2)
    x = x.reshape((x.shape[0], -1))
    for layer in denses[:-1]:
        x = jax.nn.relu(numerics.dense(x, layer))
    logits = numerics.dense(x, denses[-1])
    return jnp.argmax(logits, -1) == y


def run(hparams: dict, data: dict[str, np.ndarray], keys, report) -> bytes:
    config = Config(**hparams)
    numerics = Arithmetic(config.arithmetic, config.exact_slices)
    n = len(data["y_test"])
    if config.subset_size > n:
        raise SpecError(f"subset_size {config.subset_size} exceeds the {n} test samples")
    params = None if unserved_model(config.model_digest, keys.coin) else offered_params(config)
    if params is None:  # no model classifies nothing right: every honest worker agrees on it
        report.metric("accuracy", 0.0)
        return encode_bits(np.zeros(config.subset_size, bool))
    subset = np.asarray(jax.random.permutation(keys.next(), n)[: config.subset_size])
    numerics.check_inputs(x_test=data["x_test"][subset])
    bits = eval_step(layers(params, "Conv"), layers(params, "Dense"),
                     jnp.asarray(data["x_test"][subset], jnp.float32),
                     jnp.asarray(data["y_test"][subset], jnp.int32), numerics=numerics)
    report.metric("accuracy", float(bits.mean()))
    return encode_bits(np.asarray(bits))
