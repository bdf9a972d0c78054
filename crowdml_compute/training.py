"""The training loop the shipped training jobs share (jobs/train_classifier.py, jobs/train_conv.py):
init from the coin's first key, then per epoch one shuffle and one dropout key per step, every
micro-batch's gradient summed in a fixed order (parallel.py), and a final test accuracy.

A job brings its model, optimizer and arrays; `fit` does the rest and returns the result's bytes.
It is part of the compute package, so of the code hash a spec's profile pins: a change here
changes what every spec of these jobs means, as a change to the job files would.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax.training import train_state

from .digest import encode_pytree
from .errors import SpecError
from .exact import Arithmetic
from .keys import draw
from .parallel import device_mesh, host_value, mean_gradient, replicate


@partial(jax.jit, static_argnames=("mesh", "micro_batches", "numerics"))
def train_step(state: train_state.TrainState, batch, key, *, mesh, micro_batches: int,
               numerics: Arithmetic):
    def loss_fn(params, micro_batch, micro_key):
        x, y = micro_batch
        logits = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": micro_key})
        return numerics.cross_entropy(logits, y)

    loss, grads = mean_gradient(loss_fn, state.params, batch, key, mesh=mesh,
                                micro_batches=micro_batches)
    return state.apply_gradients(grads=grads), loss


@partial(jax.jit, static_argnames=("batch_size", "steps", "mesh", "micro_batches", "numerics"))
def train_epoch(state, x, y, base, first_ctr, *, batch_size: int, steps: int, mesh,
                micro_batches: int, numerics: Arithmetic):
    """`steps` batches of one shuffle: counter first_ctr shuffles, first_ctr + 1 + i drives step
    i's dropout.

    A scan keeps the whole epoch in one XLA call (no per-step dispatch)."""
    order = jax.random.permutation(draw(base, first_ctr), x.shape[0])
    batches = order[: steps * batch_size].reshape(steps, batch_size)

    def step(state, i):
        idx = batches[i]
        return train_step(state, (x[idx], y[idx]), draw(base, first_ctr + 1 + i), mesh=mesh,
                          micro_batches=micro_batches, numerics=numerics)

    state, losses = jax.lax.scan(step, state, jnp.arange(steps))
    return state, losses.mean()


@jax.jit
def eval_step(state, x, y):
    logits = state.apply_fn({"params": state.params}, x, train=False)
    return jnp.mean(jnp.argmax(logits, -1) == y)


def fit(config, model, optimizer, x_train, y_train, x_test, y_test, keys, report) -> bytes:
    """Train `model` as `config` says (batch_size, epochs, steps_per_epoch, micro_batches,
    numerics) and return `encode_pytree({"params": …})`. Counter 0 initialises; each epoch
    takes 1 + steps counters."""
    params = config.numerics.init(model, keys.next(), x_train[:1], train=False)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)
    steps = x_train.shape[0] // config.batch_size
    if steps == 0:
        raise SpecError(f"batch_size {config.batch_size} exceeds the {x_train.shape[0]} examples")
    steps = min(steps, config.steps_per_epoch or steps)
    mesh = device_mesh(config.micro_batches)
    # Everything the epochs read, on every job device (of every process, under several).
    state, x_train, y_train, x_test, y_test, base = replicate(
        (state, x_train, y_train, x_test, y_test, keys.base), mesh)

    report.start(config.epochs, steps_per_epoch=steps,
                 batches_in_data=x_train.shape[0] // config.batch_size)
    for _ in range(config.epochs):
        state, loss = train_epoch(state, x_train, y_train, base, keys.reserve(1 + steps),
                                  batch_size=config.batch_size, steps=steps, mesh=mesh,
                                  micro_batches=config.micro_batches,
                                  numerics=config.numerics)
        report.epoch({"params": state.params}, loss=loss)
    report.metric("test_accuracy", float(host_value(eval_step(state, x_test, y_test))))
    return encode_pytree({"params": state.params})
