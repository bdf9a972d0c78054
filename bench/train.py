"""Job-side benchmark: run `.venv/bin/python bench/train.py` from the repository root.

(a) the train_classifier job vs plain Flax/optax code for the same model, data, optimizer and
    steps, under the same (cpu-exact) flags: once against a flax-examples style Python loop over a
    jitted train_step, once against the same epoch-as-one-scan structure the job uses (which
    isolates what crowdml adds: coin keys, per-epoch transcript digests, result encoding);
(b) the job under the cpu-exact profile vs JAX's default flags;
(c) evaluation throughput of the evaluate_classifier job, and of its eval_step alone;
(d) the cost of cpu-exact's thread pinning (1 CPU, 1 XLA thread) on an MNIST-shaped model
    (2,048 × 28 × 28 float32, hidden [512, 256], batch 128), against the same profile unpinned
    (every CPU this process may use), with the digest each gives under one and under all CPUs.

XLA flags are fixed per process, so each flag set is measured in its own child process
(`--measure NAME`), which prints its figures as JSON. Times are the best of REPEATS warm runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".cache" / "stage-bench"  # the job processes' links to crowdml's packages
COIN = bytes.fromhex("be" * 32)
HPARAMS = {"epochs": 20, "batch_size": 64, "arithmetic": "float"}  # bench/exact.py: exact
REPEATS = 20
EVAL_TILES = 100  # eval_step alone runs on the test set repeated this many times


def timings(**fns) -> dict[str, tuple[float, float]]:
    """name -> (first call, which compiles; best of REPEATS warm calls), in seconds. Warm calls
    alternate between the functions, so load from other processes hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(1 + REPEATS):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (t[0], min(t[1:])) for name, t in times.items()}


def plain_trainers(job, data):
    """Plain Flax/optax training of the job's model, ending with its test accuracy like the job:
    no coin keys, no transcript, no result encoding."""
    import jax
    import numpy as np
    import optax
    from flax.training import train_state

    config = job.Config(**HPARAMS)
    classes = int(data["y_train"].max()) + 1
    model = job.MLP(hidden=config.hidden, classes=classes, dropout=config.dropout)
    optimizer = optax.adam(config.learning_rate)
    steps = len(data["y_train"]) // config.batch_size
    from crowdml_compute.parallel import device_mesh

    mesh = device_mesh(config.micro_batches)
    split = {"mesh": mesh, "micro_batches": config.micro_batches}

    def fresh_state(rng, x):
        params = model.init(rng, x[:1], train=False)["params"]
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)

    def python_loop():
        x, y, x_test, y_test = job.prepare(data)
        rng = jax.random.PRNGKey(0)
        state = fresh_state(rng, x)
        shuffle = np.random.default_rng(0)
        for epoch in range(config.epochs):
            order = shuffle.permutation(x.shape[0])[: steps * config.batch_size]
            for i, idx in enumerate(order.reshape(steps, config.batch_size)):
                rng_step = jax.random.fold_in(rng, epoch * steps + i)
                state, _ = job.train_step(state, (x[idx], y[idx]), rng_step, **split)
        return float(job.eval_step(state, x_test, y_test))

    def scan_loop():
        x, y, x_test, y_test = job.prepare(data)
        rng = jax.random.PRNGKey(0)
        state = fresh_state(rng, x)
        for epoch in range(config.epochs):
            state, _ = job.train_epoch(state, x, y, rng, epoch * (steps + 1),
                                       batch_size=config.batch_size, steps=steps, **split)
        return float(job.eval_step(state, x_test, y_test))

    return python_loop, scan_loop


def measure(flagset: str) -> dict:
    from crowdml_compute.data import export_digits
    from crowdml_compute.keys import KeyStream, configure_jax
    from crowdml_compute.profile import apply_environment, get_profile
    from crowdml_compute.runner import Report, load_job
    from crowdml_compute.spec import make_spec

    profile = get_profile("cpu-exact")
    if flagset == "cpu-exact":
        apply_environment(profile)
    import jax
    import jax.numpy as jnp

    configure_jax(profile.jax_config if flagset == "cpu-exact" else None)
    tmp = Path(tempfile.mkdtemp(prefix="crowdml-bench-"))
    export_digits(tmp / "digits.npz")
    spec = make_spec(REPO / "jobs" / "train_classifier.py", tmp / "digits.npz", HPARAMS,
                     profile="cpu-exact")
    from crowdml_compute.data import load_dataset

    data = load_dataset(spec.data_uri, spec.data_digest)
    train = load_job(spec)
    artifact = {}

    def job_run():
        artifact["model"] = train.run(dict(HPARAMS), data, KeyStream(COIN), Report(False))

    python_loop, scan_loop = plain_trainers(train, data)
    # The Python loop is timed apart: interleaved, its thousands of dispatches slowed the
    # next function's runs by ~10% (measured), which would blur the job-vs-scan comparison.
    train_times = timings(job=job_run, plain_scan=scan_loop) | timings(plain_loop=python_loop)
    figures = {f"{name}_s": best for name, (_, best) in train_times.items()}
    figures["job_first_s"] = train_times["job"][0]

    model_path = tmp / "model.bin"
    model_path.write_bytes(artifact["model"])
    from crowdml_compute.digest import decode_pytree, file_digest

    n_test = len(data["y_test"])
    eval_hparams = {"model_uri": str(model_path), "arithmetic": "float",
                    "model_digest": "0x" + file_digest(model_path).hex(), "subset_size": n_test}
    evaluate = load_job(make_spec(REPO / "jobs" / "evaluate_classifier.py", tmp / "digits.npz",
                                  eval_hparams, profile="cpu-exact"))
    eval_s = timings(job=lambda: evaluate.run(eval_hparams, data, KeyStream(COIN), Report(False)))
    eval_s = eval_s["job"][1]
    figures["eval_job_samples_per_s"] = n_test / eval_s

    layers = evaluate.layers(decode_pytree(artifact["model"])["params"], "Dense")
    x = jnp.tile(jnp.asarray(data["x_test"]), (EVAL_TILES, 1, 1))
    y = jnp.tile(jnp.asarray(data["y_test"], jnp.int32), EVAL_TILES)
    from crowdml_compute.exact import Arithmetic

    step_s = timings(step=lambda: evaluate.eval_step(
        [], layers, x, y, numerics=Arithmetic("float")).block_until_ready())["step"][1]
    figures["eval_step_samples_per_s"] = len(y) / step_s
    return figures


MNIST_ROWS = 2048
MNIST_HPARAMS = {"hidden": [512, 256], "batch_size": 128, "epochs": 1, "arithmetic": "float"}
MNIST_REPEATS = 10


def mnist_shaped(path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        np.savez(f, x_train=rng.random((MNIST_ROWS, 28, 28), dtype=np.float32),
                 y_train=rng.integers(0, 10, MNIST_ROWS).astype(np.uint8),
                 x_test=rng.random((512, 28, 28), dtype=np.float32),
                 y_test=rng.integers(0, 10, 512).astype(np.uint8))


def measure_mnist(pinning: str) -> dict:
    """Warm time of the job on the MNIST-shaped set, and its digest, in this process."""
    from crowdml_compute.data import load_dataset
    from crowdml_compute.digest import keccak_digest
    from crowdml_compute.keys import KeyStream, configure_jax
    from crowdml_compute.profile import apply_environment, get_profile
    from crowdml_compute.runner import Report, load_job
    from crowdml_compute.spec import make_spec

    profile = get_profile("cpu-exact")
    if pinning == "unpinned":
        profile = profile.model_copy(update={"cpu_threads": None, "xla_threads": None})
    apply_environment(profile)
    configure_jax(profile.jax_config, profile.flax_config)
    tmp = Path(tempfile.mkdtemp(prefix="crowdml-bench-"))
    mnist_shaped(tmp / "mnist.npz")
    spec = make_spec(REPO / "jobs" / "train_classifier.py", tmp / "mnist.npz", MNIST_HPARAMS,
                     profile="cpu-exact")
    data = load_dataset(spec.data_uri, spec.data_digest)
    job = load_job(spec)
    artifact = {}

    def job_run():
        artifact["model"] = job.run(dict(spec.hparams), data, KeyStream(COIN), Report(False))

    times = []
    for _ in range(1 + MNIST_REPEATS):
        start = time.perf_counter()
        job_run()
        times.append(time.perf_counter() - start)
    return {"job_s": min(times[1:]), "cpus": len(os.sched_getaffinity(0)),
            "digest": "0x" + keccak_digest(artifact["model"]).hex()}


def run_child(flagset: str, cpus: str | None = None) -> dict:
    """Measure in a child running cpu-exact's job stack (its own interpreter)."""
    from crowdml_compute.child import python_command
    from crowdml_compute.profile import get_profile

    python, extra = python_command(get_profile("cpu-exact"), STAGE)
    env = {k: v for k, v in {**os.environ, **extra}.items() if k != "XLA_FLAGS"}
    command = [*python, __file__, "--measure", flagset]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    child = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.splitlines()[-1])


def end_to_end_seconds() -> float:
    from crowdml_compute.data import export_digits
    from crowdml_compute.runner import run_job
    from crowdml_compute.spec import make_spec

    with tempfile.TemporaryDirectory() as tmp:
        export_digits(Path(tmp) / "digits.npz")
        spec = make_spec(REPO / "jobs" / "train_classifier.py", Path(tmp) / "digits.npz", HPARAMS)
        start = time.perf_counter()
        run_job(spec, COIN)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", choices=("cpu-exact", "default", "pinned", "unpinned"))
    args = parser.parse_args()
    if args.measure in ("pinned", "unpinned"):
        print(json.dumps(measure_mnist(args.measure)))
        return
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    exact, default = run_child("cpu-exact"), run_child("default")
    steps = HPARAMS["epochs"] * (1437 // HPARAMS["batch_size"])
    print(f"train_classifier on digits: {HPARAMS['epochs']} epochs, {steps} steps, "
          f"best of {REPEATS} warm runs, {os.cpu_count()} CPUs")
    print(f"(a) cpu-exact flags: job {exact['job_s'] * 1e3:.1f} ms")
    print(f"    vs plain Flax/optax Python loop {exact['plain_loop_s'] * 1e3:.1f} ms: "
          f"{exact['job_s'] / exact['plain_loop_s']:.2f}x")
    print(f"    vs plain Flax/optax epoch scan  {exact['plain_scan_s'] * 1e3:.1f} ms: "
          f"{exact['job_s'] / exact['plain_scan_s']:.2f}x")
    print(f"(b) job, cpu-exact {exact['job_s'] * 1e3:.1f} ms vs JAX default flags "
          f"{default['job_s'] * 1e3:.1f} ms: {exact['job_s'] / default['job_s']:.2f}x")
    print(f"    first run in a process (compile + train): cpu-exact {exact['job_first_s']:.2f} s "
          f"vs default {default['job_first_s']:.2f} s: "
          f"{exact['job_first_s'] / default['job_first_s']:.2f}x")
    print(f"(c) evaluation, cpu-exact: evaluate_classifier job "
          f"{exact['eval_job_samples_per_s']:,.0f} samples/s (360-sample test set, per call); "
          f"eval_step alone {exact['eval_step_samples_per_s']:,.0f} samples/s "
          f"({EVAL_TILES * 360:,} samples per call)")
    print(f"    (default flags: job {default['eval_job_samples_per_s']:,.0f}, eval_step "
          f"{default['eval_step_samples_per_s']:,.0f} samples/s)")
    print(f"end to end, run_job (fresh process: import, checks, compile, train): "
          f"{end_to_end_seconds():.2f} s")
    pinned, unpinned = run_child("pinned"), run_child("unpinned")
    one_cpu = run_child("unpinned", cpus=str(min(os.sched_getaffinity(0))))
    steps = MNIST_ROWS // MNIST_HPARAMS["batch_size"]
    print(f"(d) MNIST-shaped ({MNIST_ROWS} x 784, hidden {MNIST_HPARAMS['hidden']}, batch "
          f"{MNIST_HPARAMS['batch_size']}, {steps} steps), best of {MNIST_REPEATS} warm runs: "
          f"pinned to 1 CPU {pinned['job_s'] * 1e3:.0f} ms vs unpinned on {unpinned['cpus']} CPUs "
          f"{unpinned['job_s'] * 1e3:.0f} ms: {pinned['job_s'] / unpinned['job_s']:.2f}x")
    print(f"    digests: pinned {pinned['digest'][:18]}…; unpinned on {unpinned['cpus']} CPUs "
          f"{unpinned['digest'][:18]}…, on 1 CPU {one_cpu['digest'][:18]}…")
    # Other processes on the machine skew every figure above; say how busy it was.
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
