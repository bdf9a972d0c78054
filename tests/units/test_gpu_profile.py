"""gpu-exact and gpu-portable (current jax, CUDA 13, in their job environment) pin one GPU
model (gpu-exact) and the CUDA runtime, cuDNN and cuBLAS their process loads, and a worker is
refused before any deposit on another. No GPU here: the refusals are checked against
given device lists and versions, and the run on a GPU skips without one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from crowdml_compute import profile as profiles
from crowdml_compute.profile import PROFILES, check_environment
from ape_crowdml.errors import EnvironmentMismatch

GPU = PROFILES["gpu-exact"]
GPU_DEVICE_KIND = GPU.device_kind
GPU_LIBRARIES = GPU.gpu_libraries
HAS_GPU = bool(profiles._nvidia_smi_gpus())


@pytest.mark.parametrize("name", ["gpu-exact", "gpu-portable"])
def test_gpu_profiles_pin_the_cuda_libraries_and_gpu_exact_the_device_kind(name):
    gpu = PROFILES[name]
    assert set(gpu.gpu_libraries) == {"cuda", "cudnn", "cublas"}
    for package in ("jax-cuda13-plugin", "nvidia-cuda-runtime", "nvidia-cudnn-cu13",
                    "nvidia-cublas"):
        assert package in gpu.packages
    assert PROFILES["gpu-exact"].device_kind == "NVIDIA H100 80GB HBM3"


def test_another_gpu_model_or_none_is_refused():
    profiles._check_device_kind(GPU, [GPU_DEVICE_KIND, GPU_DEVICE_KIND])
    with pytest.raises(EnvironmentMismatch, match="this machine has NVIDIA A100-SXM4-80GB"):
        profiles._check_device_kind(GPU, [GPU_DEVICE_KIND, "NVIDIA A100-SXM4-80GB"])
    with pytest.raises(EnvironmentMismatch, match="shows none"):
        profiles._check_device_kind(GPU, [])


@pytest.mark.parametrize("library", sorted(GPU_LIBRARIES))
def test_another_cuda_library_version_is_refused(library):
    profiles._check_gpu_libraries(GPU, dict(GPU_LIBRARIES))
    with pytest.raises(EnvironmentMismatch, match=f"pins {library} {GPU_LIBRARIES[library]}, "
                                                  "the job process loads 1"):
        profiles._check_gpu_libraries(GPU, {**GPU_LIBRARIES, library: 1})
    with pytest.raises(EnvironmentMismatch, match="loads none"):
        profiles._check_gpu_libraries(GPU, {})


def test_the_pre_deposit_check_refuses_a_machine_without_the_gpu(monkeypatch):
    """check_environment (what a worker runs before it deposits) asks nvidia-smi: with this
    process's own packages and Python pinned, a machine without the GPU, and one with another,
    are refused."""
    import sys
    from importlib.metadata import version

    here = GPU.model_copy(update={"packages": {"pydantic": version("pydantic")},
                                  "python": "%d.%d" % sys.version_info[:2], "native": {}})
    if importlib.util.find_spec("jax_plugins") is None:
        with pytest.raises(EnvironmentMismatch, match="jax"):
            check_environment(GPU.model_copy(update={"python": here.python}))
    cpu_packages = here
    monkeypatch.setattr(profiles, "_nvidia_smi_gpus", lambda: [])
    with pytest.raises(EnvironmentMismatch, match="shows none"):
        check_environment(cpu_packages)
    monkeypatch.setattr(profiles, "_nvidia_smi_gpus", lambda: ["Tesla T4"])
    with pytest.raises(EnvironmentMismatch, match="has Tesla T4"):
        check_environment(cpu_packages)
    monkeypatch.setattr(profiles, "_nvidia_smi_gpus", lambda: [GPU_DEVICE_KIND])
    check_environment(cpu_packages)


@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("profile", ["gpu-exact", "gpu-portable"])
def test_a_job_on_the_gpu_gives_one_digest(tmp_path, profile):
    from crowdml_compute import child

    try:
        child.check_environment(PROFILES[profile])
    except EnvironmentMismatch as exc:
        pytest.skip(f"this machine cannot run {profile}: {exc}")
    from crowdml_compute.data import export_digits
    from crowdml_compute.runner import run_job
    from crowdml_compute.spec import make_spec

    export_digits(tmp_path / "digits.npz")
    job = Path(__file__).resolve().parents[2] / "jobs" / "train_conv.py"
    spec = make_spec(job, tmp_path / "digits.npz", {"epochs": 1, "steps_per_epoch": 3},
                     profile=profile)
    coin = bytes.fromhex("c0" * 32)
    assert run_job(spec, coin).digest == run_job(spec, coin).digest
