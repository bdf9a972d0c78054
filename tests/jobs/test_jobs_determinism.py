"""Honest workers agree on real-sized models: one spec, one digest, whatever the worker's CPU
affinity and environment variables. Real runs in child processes (a few seconds each).

The MNIST-shaped spec is small (4 batches of 128 through 784 → 512) but large enough that XLA's
threaded matmul changes the bytes: the control test shows an unpinned profile giving two digests
on one and two CPUs, which is what the pinned profile must not do.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crowdml_compute.spec import make_spec, save_spec
from job_support import job_process, job_python

REPO = Path(__file__).resolve().parents[2]
TRAIN_JOB = REPO / "jobs" / "train_classifier.py"
COIN = "0x" + "c0" * 32
AFFINITIES = ("0", "1", "0,1")
# Each of these changed the digest or crashed the job when the worker's environment leaked into
# the job's process; PJRT_NPROC/NPROC size XLA's thread pool; the last three change the kernel of
# XLA's matmuls (Eigen's own or oneDNN's sgemm, and which oneDNN ISA).
LEAKY_VARIABLES = {
    "JAX_RANDOM_SEED_OFFSET": "1",
    "FLAX_FIX_RNG_SEPARATOR": "1",
    "JAX_DISABLE_JIT": "1",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "EAGER_CONSTANT_FOLDING": "1",
    "JAX_NUMPY_DTYPE_PROMOTION": "strict",
    "JAX_DEFAULT_MATMUL_PRECISION": "bfloat16",
    "PJRT_NPROC": "2",
    "NPROC": "2",
    "XLA_FLAGS": "--xla_cpu_enable_fast_math=true --xla_cpu_max_isa=AVX512",
    "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL": "0",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}

needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or
                                    not {0, 1} <= os.sched_getaffinity(0),
                                    reason="needs CPUs 0 and 1")


# A jitted matmul at MNIST's first-layer shape and a sum over 2**24 floats. With `pin`, the
# process applies the profile as a job's process does.
OPS_SCRIPT = """
import hashlib, sys
from crowdml_compute.profile import PROFILES, apply_environment
if sys.argv[1] == "pin":
    apply_environment(PROFILES[sys.argv[2]])
import jax, numpy as np
rng = np.random.default_rng(0)
a, b = rng.standard_normal((256, 784), np.float32), rng.standard_normal((784, 512), np.float32)
x = rng.standard_normal(1 << 24, np.float32)
product, total = jax.jit(lambda a, b: a @ b)(a, b), jax.jit(jax.numpy.sum)(x)
print(hashlib.sha256(np.asarray(product).tobytes() + np.asarray(total).tobytes()).hexdigest())
"""


def op_bytes(cpus: str, mode: str, profile: str = "cpu-exact") -> str:
    python, env = job_python(profile)  # the profile's job environment
    child = subprocess.run(["taskset", "-c", cpus, *python, "-c", OPS_SCRIPT, mode, profile],
                           capture_output=True, text=True, cwd=REPO, env=env)
    assert child.returncode == 0, child.stderr
    return child.stdout.strip()


@needs_two_cpus
def test_matmul_and_large_sum_give_one_result_under_every_affinity_when_pinned():
    """(On jax 0.7.1 the same ops unpinned differed between one and two CPUs; on jax 0.11.2
    they did not, on this machine, so the control that can fail is the job-level one below.)"""
    assert len({op_bytes(cpus, "pin") for cpus in AFFINITIES}) == 1


def run_cli(spec_path: Path, cpus: str | None = None, env: dict | None = None) -> str:
    """The job's digest from `python -m crowdml_compute.runner`, under `taskset -c cpus`."""
    command, environment = job_process(env={**os.environ, **(env or {})})
    command += ["--spec", str(spec_path), "--coin", COIN, "--no-progress"]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    child = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment)
    assert child.returncode == 0, child.stderr
    return child.stdout.strip()


@pytest.fixture(scope="module")
def mnist_shaped(tmp_path_factory) -> Path:
    """28×28 float32 images like MNIST's (fewer rows); the bytes are fixed by the seed."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("mnist") / "mnist-shaped.npz"
    with open(path, "wb") as f:
        np.savez(f, x_train=rng.random((512, 28, 28), dtype=np.float32),
                 y_train=rng.integers(0, 10, 512).astype(np.uint8),
                 x_test=rng.random((128, 28, 28), dtype=np.float32),
                 y_test=rng.integers(0, 10, 128).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def mnist_spec(mnist_shaped):
    # float arithmetic under the pinned profile: what these tests are about (exact arithmetic
    # needs no pinning: tests/jobs/test_exact_agreement.py)
    return make_spec(TRAIN_JOB, mnist_shaped, {"hidden": [512], "batch_size": 128, "epochs": 1,
                                               "arithmetic": "float"}, profile="cpu-exact")


@needs_two_cpus
@pytest.mark.slow  # tests/jobs/test_jobs.py pins the small job under affinities
def test_mnist_shaped_digest_is_one_under_every_affinity(mnist_spec, tmp_path):
    spec_path = save_spec(mnist_spec, tmp_path / "spec.json")
    digests = {cpus: run_cli(spec_path, cpus) for cpus in AFFINITIES}
    assert len(set(digests.values())) == 1, digests


@needs_two_cpus
def test_control_unpinned_profile_disagrees_between_one_and_two_cpus(mnist_spec, tmp_path):
    """Without the pinning the same spec gives two digests: the test above can fail."""
    unpinned = mnist_spec.profile.model_copy(update={"cpu_threads": None, "xla_threads": None})
    spec_path = save_spec(mnist_spec.model_copy(update={"profile": unpinned}),
                          tmp_path / "spec.json")
    assert run_cli(spec_path, "0") != run_cli(spec_path, "0,1")


def test_worker_variables_and_compilation_cache_do_not_reach_the_job(mnist_spec, tmp_path):
    spec_path = save_spec(mnist_spec, tmp_path / "spec.json")
    clean = run_cli(spec_path)
    cache = tmp_path / "jax-cache"
    cache.mkdir()
    leaky = {**LEAKY_VARIABLES, "JAX_COMPILATION_CACHE_DIR": str(cache),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    assert run_cli(spec_path, env=leaky) == clean
    assert list(cache.iterdir()) == []  # nothing compiled elsewhere can be loaded back


def test_a_profile_needing_more_cpus_than_allowed_is_refused(mnist_spec, tmp_path):
    wide = mnist_spec.profile.model_copy(update={"cpu_threads": len(os.sched_getaffinity(0)) + 1})
    spec_path = save_spec(mnist_spec.model_copy(update={"profile": wide}), tmp_path / "spec.json")
    command, env = job_process()
    child = subprocess.run(command + ["--spec", str(spec_path), "--coin", COIN, "--no-progress"],
                           capture_output=True, text=True, cwd=REPO, env=env)
    assert child.returncode == 2 and child.stderr.count("\n") == 1, child.stderr
    assert "CPUs, this process may use" in child.stderr
