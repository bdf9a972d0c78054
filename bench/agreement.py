"""Agreement across machines: the digests of fixed specs on this machine, to compare with
another's (another CPU model, a GPU machine's CPU, its GPU).

Runs in a job environment's interpreter, with crowdml's packages on PYTHONPATH, so that it also
runs where the plugin (ape) is not installed, e.g. a lent GPU machine whose image carries the
job stack:

    PYTHONPATH=<folder linking crowdml_compute and crowdml_jobs> .jobenv/jax0.11.2-py3.12/bin/python \\
        -s bench/agreement.py [--profiles cpu-portable gpu-portable gpu-exact]

(`make agreement` does this with the repository's job environment.) For each profile it makes
the specs below on scikit-learn's digits (exported byte for byte alike everywhere), runs each
twice, each in a fresh job process (`runner`), and prints one JSON line: the machine (CPU
model, cache sizes, GPUs, versions) and every digest. A profile this machine does not match is
reported with the one-line refusal, which names what differs. The same specs and coin give the
same digests on every machine that matches the profile, or the profile is not exact enough.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COIN = "0x" + "a5" * 32
SPECS = {
    "mlp": ("train_classifier", {"epochs": 2, "micro_batches": 8}),
    "conv": ("train_conv", {"epochs": 1, "steps_per_epoch": 8, "micro_batches": 8}),
}


def machine() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    caches = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(caches.glob("index*")) if caches.exists() else ():
        level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
        info[f"L{level}{kind[0].lower()}"] = (index / "size").read_text().strip()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True) if _has("nvidia-smi") else None
    info["gpus"] = smi.stdout.strip().splitlines() if smi and smi.returncode == 0 else []
    import importlib.metadata

    for package in ("jax", "jaxlib", "numpy", "flax", "optax", "ml_dtypes", "jax-cuda13-plugin",
                    "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cublas"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def _has(command: str) -> bool:
    import shutil

    return shutil.which(command) is not None


def run(spec_file: Path) -> str:
    """A job's digest from a fresh runner process of this interpreter, or its refusal."""
    child = subprocess.run([sys.executable, "-s", "-P", "-m", "crowdml_compute.runner", "--spec",
                            str(spec_file), "--coin", COIN, "--no-progress"],
                           capture_output=True, text=True, env=os.environ)
    if child.returncode:
        return "refused: " + (child.stderr.strip().splitlines() or ["no output"])[-1]
    return child.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", nargs="+", default=["cpu-portable", "cpu-exact"])
    args = parser.parse_args()
    from crowdml_compute.data import export_digits
    from crowdml_compute.errors import CrowdmlError
    from crowdml_compute.jobs import resolve_job
    from crowdml_compute.profile import get_profile
    from crowdml_compute.spec import make_spec, save_spec

    folder = Path(tempfile.mkdtemp(prefix="crowdml-agreement-"))
    data = folder / "digits.npz"
    figures = {"machine": machine(), "data": "0x" + export_digits(data).hex(), "coin": COIN}
    for profile in args.profiles:
        for name, (job, hparams) in SPECS.items():
            key = f"{profile}/{name}"
            try:
                # A portable profile runs exact arithmetic; the pinned ones, float.
                arithmetic = "exact" if get_profile(profile).requires_exact else "float"
                spec = make_spec(resolve_job(job, []), data,
                                 {**hparams, "arithmetic": arithmetic}, profile=profile)
            except CrowdmlError as exc:
                figures[key] = f"refused: {exc}"
                continue
            spec_file = save_spec(spec, folder / f"{profile}-{name}.json")
            figures[key] = {"spec": "0x" + spec.digest().hex(),
                            "digests": [run(spec_file), run(spec_file)]}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
