"""Exact arithmetic against float: run `.venv/bin/python bench/exact.py` from the repository root.

For each mode, a child process of the cpu-portable job stack times one training epoch of the
MNIST-shaped MLP (2,048 × 28 × 28, hidden [512, 256], batch 128), one epoch of the conv job
(the same images, features [16, 32], dense 64, batch 128) and the evaluation job (the MLP on
the 512 test images), and trains both models on scikit-learn's digits for their test accuracy:

- `float`: float arithmetic, JAX's default flags, every core (what a plain JAX user gets);
- `cpu-exact`: float arithmetic under today's pinned profile (1 CPU, an 8-thread pool, AVX2);
- `exact-1`, `exact-2`, `exact-3`: exact arithmetic (crowdml_compute/exact.py) with 1, 2, 3 slices,
  default flags, every core (the cpu-portable profile).

Modes alternate over ROUNDS rounds of child processes and each figure is the best warm run, so
load from elsewhere hits every mode alike. Prints the table and the ratios side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".cache" / "stage-bench"
COIN = bytes.fromhex("be" * 32)
MODES = {"float": ("float", 2, None), "cpu-exact": ("float", 2, "cpu-exact"),
         "exact-1": ("exact", 1, None), "exact-2": ("exact", 2, None),
         "exact-3": ("exact", 3, None)}
ROUNDS = 2
REPEATS = 3
MLP = {"hidden": [512, 256], "batch_size": 128, "epochs": 1}
CONV = {"features": [16, 32], "dense": 64, "batch_size": 128, "epochs": 1, "micro_batches": 1}
DIGITS = {"train_classifier": {"epochs": 10}, "train_conv": {"epochs": 5}}


def best(fn, repeats: int = REPEATS) -> float:
    fn()  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(mode: str, folder: Path, accuracy: bool) -> dict:
    arithmetic, slices, pinned = MODES[mode]
    if pinned:
        from crowdml_compute.profile import apply_environment, get_profile

        apply_environment(get_profile(pinned))
    import numpy as np

    from crowdml_compute.digest import keccak_digest
    from crowdml_compute.keys import KeyStream, configure_jax
    from crowdml_compute.runner import Report, load_job_file

    if pinned:
        configure_jax(get_profile(pinned).jax_config)
    numerics = {"arithmetic": arithmetic, "exact_slices": slices}
    jobs = {name: load_job_file(REPO / "jobs" / f"{name}.py")[0]
            for name in ("train_classifier", "train_conv", "evaluate_classifier")}
    mnist = dict(np.load(folder / "mnist.npz"))
    figures, models = {}, {}

    def run(name, hparams, data):
        def once():
            models[name] = jobs[name].run({**hparams, **numerics}, data, KeyStream(COIN),
                                          Report(False))
        return once

    figures["mlp_epoch_s"] = best(run("train_classifier", MLP, mnist))
    figures["conv_epoch_s"] = best(run("train_conv", CONV, mnist))
    model = folder / f"model-{mode}.bin"
    model.write_bytes(models["train_classifier"])
    evaluation = {"model_uri": str(model), "model_digest": "0x" + keccak_digest(
        models["train_classifier"]).hex(), "subset_size": len(mnist["y_test"])}
    figures["eval_s"] = best(run("evaluate_classifier", evaluation, mnist), 10)
    if accuracy:
        digits = dict(np.load(folder / "digits.npz"))
        for name, hparams in DIGITS.items():
            report = Report(False)
            jobs[name].run({**hparams, **numerics}, digits, KeyStream(COIN), report)
            figures[f"{name}_accuracy"] = report.metrics["test_accuracy"]
    return figures


def run_child(mode: str, folder: Path, accuracy: bool) -> dict:
    from crowdml_compute.child import python_command
    from crowdml_compute.profile import get_profile

    python, extra = python_command(get_profile("cpu-portable"), STAGE)
    import os

    command = python + [__file__, "--measure", mode, str(folder)] + (["--accuracy"] if accuracy
                                                                      else [])
    child = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, **extra})
    if child.returncode:
        sys.exit(f"{mode}: {child.stderr.strip().splitlines()[-1]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", choices=MODES)
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--accuracy", action="store_true")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.folder, args.accuracy)))
        return
    import numpy as np

    from crowdml_compute.data import export_digits

    folder = Path(tempfile.mkdtemp(prefix="crowdml-bench-exact-"))
    export_digits(folder / "digits.npz")
    rng = np.random.default_rng(0)
    with open(folder / "mnist.npz", "wb") as f:
        np.savez(f, x_train=rng.random((2048, 28, 28), dtype=np.float32),
                 y_train=rng.integers(0, 10, 2048).astype(np.uint8),
                 x_test=rng.random((512, 28, 28), dtype=np.float32),
                 y_test=rng.integers(0, 10, 512).astype(np.uint8))
    results: dict[str, dict] = {}
    for round_ in range(ROUNDS):
        for mode in MODES:
            figures = run_child(mode, folder, accuracy=round_ == 0)
            kept = results.setdefault(mode, figures)
            for name, value in figures.items():
                if name.endswith("_s"):
                    kept[name] = min(kept[name], value)
    base, pinned = results["float"], results["cpu-exact"]
    print(f"{'mode':10} {'MLP epoch':>22} {'conv epoch':>22} {'evaluation':>22} "
          f"{'digits MLP':>10} {'digits conv':>11}")
    print(f"{'':10} {'s (×float, ×cpu-exact)':>22} {'':>22} {'':>22} {'accuracy':>10} "
          f"{'accuracy':>11}")
    for mode, figures in results.items():
        cells = [f"{figures[key]:.3f} ({figures[key] / base[key]:.2f}, "
                 f"{figures[key] / pinned[key]:.2f})"
                 for key in ("mlp_epoch_s", "conv_epoch_s", "eval_s")]
        print(f"{mode:10} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
              f"{figures['train_classifier_accuracy']:>10.1%} "
              f"{figures['train_conv_accuracy']:>11.1%}")


if __name__ == "__main__":
    main()
