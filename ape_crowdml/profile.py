"""Environment profiles: what a worker's process must look like for results to agree bit for bit.

A profile pins package versions, the platform, XLA flags, extra environment variables and JAX
config. The runner starts every job in a fresh child process whose environment is
`environment_for(profile)`: XLA reads XLA_FLAGS once, when its backend starts, so flags cannot be
changed in a process that has already used jax (the ape process may well have).

cpu-exact: `--xla_cpu_max_isa=AVX2` keeps XLA from emitting AVX-512 code, so AVX2 and AVX-512
machines agree (measured: capping at AVX2 or AVX512 kept a 300-step MLP's bytes, AVX or SSE4_2
changed them); fast math off keeps IEEE semantics; Eigen's thread pool off because a threaded
contraction may split the summed dimension by thread count (small models did not show it, large
matmuls can).
gpu-exact: deterministic GPU ops (no atomics-ordered reductions), TF32 off, highest matmul
precision.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform as _platform
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .errors import EnvironmentMismatch

PINNED_PACKAGES = {
    "jax": "0.7.1",
    "jaxlib": "0.7.1",
    "flax": "0.12.0",
    "optax": "0.2.8",
    "numpy": "1.26.4",
}


class Profile(BaseModel):
    """A pinned environment. Part of the job spec, so part of the on-chain spec digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    platform: str  # the jax backend: "cpu" or "gpu"
    machine: str  # platform.machine() of workers, e.g. "x86_64"
    cpu_features: tuple[str, ...] = ()  # /proc/cpuinfo flags the capped ISA needs
    packages: dict[str, str]
    xla_flags: tuple[str, ...]
    env: dict[str, str] = {}
    jax_config: dict[str, str | bool | int] = {}


PROFILES = {
    "cpu-exact": Profile(
        name="cpu-exact",
        platform="cpu",
        machine="x86_64",
        cpu_features=("avx2", "fma"),
        packages=PINNED_PACKAGES,
        xla_flags=(
            "--xla_cpu_enable_fast_math=false",
            "--xla_cpu_max_isa=AVX2",
            "--xla_cpu_multi_thread_eigen=false",
        ),
        env={"JAX_PLATFORMS": "cpu"},
        jax_config={"jax_default_matmul_precision": "highest"},
    ),
    "gpu-exact": Profile(
        name="gpu-exact",
        platform="gpu",
        machine="x86_64",
        # The CUDA plugin carries the GPU kernels, so it is pinned like jaxlib.
        packages={**PINNED_PACKAGES, "jax-cuda12-plugin": "0.7.1", "jax-cuda12-pjrt": "0.7.1"},
        xla_flags=("--xla_gpu_deterministic_ops=true",),
        env={"JAX_PLATFORMS": "cuda", "NVIDIA_TF32_OVERRIDE": "0"},
        jax_config={"jax_default_matmul_precision": "highest"},
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise EnvironmentMismatch(
            f"unknown environment profile {name!r}; known: {', '.join(PROFILES)}"
        ) from None


def environment_for(profile: Profile) -> dict[str, str]:
    """Environment variables for the job's child process.

    XLA_FLAGS is replaced, not appended to: any flag the user had set could change the numerics.
    """
    return {**profile.env, "XLA_FLAGS": " ".join(profile.xla_flags)}


def apply_environment(profile: Profile) -> None:
    """Set the profile's variables in this process; only valid before jax is imported."""
    if "jax" in sys.modules:
        raise EnvironmentMismatch(
            "jax was imported before the profile was applied; run the job in a fresh process"
        )
    os.environ.update(environment_for(profile))


def _cpu_flags() -> set[str] | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def check_environment(spec) -> None:
    """Static checks of a spec's (or a bare Profile's) pinned environment against this machine:
    package versions, machine, CPU features. Safe in any process; a worker runs it before it
    deposits. Raises EnvironmentMismatch naming the first difference.
    """
    profile = spec if isinstance(spec, Profile) else spec.profile
    for package, pinned in profile.packages.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            raise EnvironmentMismatch(
                f"profile {profile.name} pins {package}=={pinned}, this machine has "
                f"{installed or 'none'}; install {package}=={pinned}"
            )
    if _platform.machine() != profile.machine:
        raise EnvironmentMismatch(
            f"profile {profile.name} is for {profile.machine} machines, this is "
            f"{_platform.machine()}"
        )
    flags = _cpu_flags()
    missing = [f for f in profile.cpu_features if flags is not None and f not in flags]
    if missing:
        raise EnvironmentMismatch(
            f"profile {profile.name} needs CPU features {', '.join(missing)}, which this CPU lacks"
        )


def check_process(profile: Profile) -> None:
    """Checks that need jax, in the job's own process: flags in force and the live backend."""
    import jax

    expected = environment_for(profile)
    for name, value in expected.items():
        if os.environ.get(name) != value:
            raise EnvironmentMismatch(
                f"{name}={os.environ.get(name)!r} in the job process, profile {profile.name} "
                f"needs {value!r}"
            )
    try:
        backend = jax.default_backend()
    except (RuntimeError, AssertionError) as exc:  # jax asserts when JAX_PLATFORMS has no plugin
        raise EnvironmentMismatch(
            f"profile {profile.name} needs a {profile.platform} backend: {exc}".splitlines()[0]
        ) from None
    if backend != profile.platform:
        raise EnvironmentMismatch(
            f"profile {profile.name} needs the {profile.platform} backend, jax runs on {backend}"
        )
    for name, value in profile.jax_config.items():
        if getattr(jax.config, name) != value:
            raise EnvironmentMismatch(f"jax config {name} is not {value!r}")
