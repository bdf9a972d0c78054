"""Evaluate a trained MLP classifier on a coin-chosen subset of the test set (the paper's
model-evaluation instance); the result is the correctness bitstring.

crowdml job (contract in ape_crowdml/compute/runner.py): `run(hparams, data, keys, report) -> bytes`.
Hyperparameters are the fields of `Config`: the model is an artifact of
`jobs/train_classifier.py` (its `encode_pytree({"params": …})` bytes), named by path and keccak256
and verified like the data. Counter 0 draws the subset: the first `subset_size` entries of a
permutation of the test set. Bit i of the result is 1 when subset sample i is classified right;
the result is `encode_bits(bits)`, so the contract can count the ones.

The forward pass is written out from the parameters (Dense_0 … Dense_k, relu between, the same
layers train_classifier's MLP builds) rather than imported from that job: a job's behaviour must
be fixed by its own source, whose keccak256 the spec pins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from ape_crowdml.compute.data import read_verified
from ape_crowdml.compute.digest import decode_pytree, encode_bits
from ape_crowdml.compute.errors import SpecError
from ape_crowdml.compute.spec import Bytes32Hex, HParams


class Config(HParams):
    model_uri: str
    model_digest: Bytes32Hex  # keccak256 of the model file
    subset_size: int = Field(gt=0)


def dense_layers(params: dict) -> list[dict]:
    """The Dense_i layers in index order (a plain sort would put Dense_10 before Dense_2)."""
    names = sorted(params, key=lambda name: int(name.removeprefix("Dense_")))
    return [params[name] for name in names]


@jax.jit
def eval_step(layers, x, y):
    x = x.reshape((x.shape[0], -1))
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    logits = x @ layers[-1]["kernel"] + layers[-1]["bias"]
    return jnp.argmax(logits, -1) == y


def run(hparams: dict, data: dict[str, np.ndarray], keys, report) -> bytes:
    config = Config(**hparams)
    model = decode_pytree(read_verified(config.model_uri, config.model_digest))
    n = len(data["y_test"])
    if config.subset_size > n:
        raise SpecError(f"subset_size {config.subset_size} exceeds the {n} test samples")
    subset = np.asarray(jax.random.permutation(keys.next(), n)[: config.subset_size])
    bits = eval_step(dense_layers(model["params"]),
                     jnp.asarray(data["x_test"][subset], jnp.float32),
                     jnp.asarray(data["y_test"][subset], jnp.int32))
    report.metric("accuracy", float(bits.mean()))
    return encode_bits(np.asarray(bits))
