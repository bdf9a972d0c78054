"""Data-parallel benchmark: run `.venv/bin/python bench/parallel.py` from the repository root.

The conv job (jobs/train_conv.py) on its synthetic CIFAR-shaped set (32×32×3, batch 64 in
MICRO_BATCHES micro-batches, STEPS steps), timed as training steps per second:

(e) under the cpu-exact profile vs JAX's default flags, on one device;
(f) the fixed-order path (per-micro-batch gradients, all_gather, ordered sum) vs plain data
    parallelism (`pmean` of each device's mean gradient) on the same DEVICES virtual devices;
    and the digest of each on 1 and on DEVICES devices.

Flags and device counts are fixed per process, so each is measured in its own child process
(`--measure FLAGS DEVICES`), which prints JSON. Times are the best of REPEATS warm runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".cache" / "stage-bench"  # the job processes' links to crowdml's packages
JOB = REPO / "jobs" / "train_conv.py"
COIN = bytes.fromhex("be" * 32)
DEVICES = 2
MICRO_BATCHES = 4
STEPS = 16
REPEATS = 5
SYNTHETIC = {"seed": 0, "n_train": 1024, "n_test": 256}


def hparams(job) -> dict:
    data = job.synthetic_cifar(**SYNTHETIC)
    return {"batch_size": 64, "micro_batches": MICRO_BATCHES, "epochs": 1, "arithmetic": "float",
            "steps_per_epoch": STEPS,
            "synthetic": {**SYNTHETIC, "digest": job.synthetic_digest(data)}}


def timings(**fns) -> dict[str, float]:
    """name -> best of REPEATS warm calls, in seconds. Calls alternate between the functions,
    so load from other processes hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(1 + REPEATS):  # the first call compiles
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t[1:]) for name, t in times.items()}


def measure(flags: str, devices: int, profile_name: str) -> dict:
    from crowdml_compute.profile import apply_environment, get_profile

    profile = get_profile(profile_name)
    if flags == "exact":
        apply_environment(profile, devices)
    import jax

    from crowdml_compute import parallel
    from crowdml_compute.digest import keccak_digest
    from crowdml_compute.keys import KeyStream, configure_jax
    from crowdml_compute.runner import Report, load_job_file

    configure_jax(profile.jax_config if flags == "exact" else None)
    parallel.configure_devices(profile, devices)
    jobs = {"fixed": load_job_file(JOB)[0]}
    if devices > 1:
        # The same job with each step's gradient from plain pmean data parallelism: a fresh
        # copy of the module, so nothing compiled for the fixed path is reused.
        plain = jobs["pmean"] = load_job_file(JOB)[0]
        plain.mean_gradient = (lambda loss_fn, params, batch, key, *, mesh, micro_batches:
                               parallel.pmean_gradient(loss_fn, params, batch, key, mesh=mesh))
    settings = hparams(jobs["fixed"])

    def epoch(job):
        """One epoch of the job's own train_epoch on its data: the training steps alone."""
        config = job.Config(**settings)
        data = job.load_data(config, {})
        x, y = job.images(data["x_train"]), jax.numpy.asarray(data["y_train"], "int32")
        model, optimizer = job.make_trainer(config, job.CIFAR_CLASSES)
        keys = KeyStream(COIN)
        params = model.init(keys.next(), x[:1], train=False)["params"]
        state = job.train_state.TrainState.create(apply_fn=model.apply, params=params,
                                                  tx=optimizer)
        mesh = parallel.device_mesh(config.micro_batches)
        return lambda: jax.block_until_ready(job.train_epoch(
            state, x, y, keys.base, 1, batch_size=config.batch_size, steps=STEPS, mesh=mesh,
            micro_batches=config.micro_batches))

    seconds = timings(**{name: epoch(job) for name, job in jobs.items()})
    figures = {f"{name}_steps_per_s": STEPS / s for name, s in seconds.items()}
    for name, job in jobs.items():
        artifact = job.run(settings, {}, KeyStream(COIN), Report(False))
        figures[f"{name}_digest"] = "0x" + keccak_digest(artifact).hex()
    figures["cpus"] = len(os.sched_getaffinity(0))
    return figures


def run_child(flags: str, devices: int, profile: str = "cpu-exact") -> dict:
    """Measure in a child running the profile's job stack (its own interpreter)."""
    from crowdml_compute.child import python_command
    from crowdml_compute.profile import get_profile

    python, extra = python_command(get_profile(profile), STAGE)
    env = {k: v for k, v in {**os.environ, **extra}.items() if k != "XLA_FLAGS"}
    command = python + [__file__, "--measure", flags, str(devices), profile]
    child = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if child.returncode:
        sys.exit(child.stderr)
    return json.loads(child.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", nargs=3, metavar=("FLAGS", "DEVICES", "PROFILE"))
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.measure[2])))
        return
    exact, default = run_child("exact", 1), run_child("default", 1)
    wide = run_child("exact", DEVICES)
    print(f"train_conv on synthetic CIFAR-shaped data: batch 64 in {MICRO_BATCHES} micro-batches, "
          f"{STEPS} steps, best of {REPEATS} warm runs, {os.cpu_count()} CPUs")
    print(f"(e) 1 device: cpu-exact {exact['fixed_steps_per_s']:.1f} steps/s vs JAX default "
          f"flags {default['fixed_steps_per_s']:.1f} steps/s: "
          f"{default['fixed_steps_per_s'] / exact['fixed_steps_per_s']:.2f}x the time")
    print(f"(f) {DEVICES} devices, cpu-exact: fixed-order {wide['fixed_steps_per_s']:.1f} steps/s "
          f"vs plain pmean {wide['pmean_steps_per_s']:.1f} steps/s: "
          f"{wide['pmean_steps_per_s'] / wide['fixed_steps_per_s']:.2f}x the time")
    print(f"    digests: fixed-order on 1 device {exact['fixed_digest'][:18]}…, on {DEVICES} "
          f"{wide['fixed_digest'][:18]}…; pmean on {DEVICES} {wide['pmean_digest'][:18]}…")
    print(f"    job CPUs: {exact['cpus']} for 1 device, {wide['cpus']} for {DEVICES}")
    # Other processes on the machine skew every figure above; say how busy it was.
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
