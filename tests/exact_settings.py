"""One process of the exact-arithmetic settings matrix (tests/jobs/test_exact_agreement.py).

Run in the job environment, unsealed on purpose: the caller sets the very variables a job
process would otherwise have removed (PJRT_NPROC, XLA_FLAGS, DNNL_MAX_CPU_ISA, …) and the CPU
affinity, to show that exact arithmetic does not need them pinned. Trains the MLP and the conv
job on the MNIST-shaped set, with exact and with float arithmetic, evaluates a fixed model, and
prints one JSON line: {"mlp-exact": digest, "mlp-float": …, "conv-exact": …, "evaluate-exact":
…}, and "conv-float" with CROWDML_EXACT_MATRIX set.

    python exact_settings.py DATA MODEL DEVICES [PROCESS PROCESSES PORT]
"""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COIN = bytes.fromhex("c0" * 32)
MICRO_BATCHES = 8  # 1, 2, 4 and 8 devices share a batch
MLP = {"hidden": [512, 256], "batch_size": 128, "epochs": 1, "dropout": 0.1,
       "micro_batches": MICRO_BATCHES}
CONV = {"features": [8, 16], "dense": 32, "batch_size": 64, "epochs": 1, "steps_per_epoch": 3,
        "micro_batches": MICRO_BATCHES}


def main() -> None:
    data_file, model_file, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    group = tuple(int(a) for a in sys.argv[4:7]) or None
    import jax

    from crowdml_compute import parallel
    from crowdml_compute.digest import keccak_digest
    from crowdml_compute.keys import KeyStream
    from crowdml_compute.profile import PROFILES
    from crowdml_compute.runner import Report, load_job_file

    profile = PROFILES["cpu-portable"]
    parallel.configure_devices(profile, devices)
    if group is not None:
        process, processes, port = group
        parallel.start_processes(profile, f"127.0.0.1:{port}", processes, process)
    import numpy as np

    data = dict(np.load(data_file))
    digests = {}

    def run(name: str, job: str, hparams: dict) -> None:
        module, _ = load_job_file(REPO / "jobs" / f"{job}.py")
        report = Report(False)
        artifact = module.run(hparams, data, KeyStream(COIN), report)
        report.close()
        digests[name] = "0x" + keccak_digest(artifact).hex()

    model = Path(model_file).read_bytes()
    for arithmetic in ("exact", "float"):
        run(f"mlp-{arithmetic}", "train_classifier", {**MLP, "arithmetic": arithmetic})
    run("conv-exact", "train_conv", {**CONV, "arithmetic": "exact"})
    if os.environ.get("CROWDML_EXACT_MATRIX"):  # the float conv control: the whole matrix only
        run("conv-float", "train_conv", {**CONV, "arithmetic": "float"})
    run("evaluate-exact", "evaluate_classifier",
        {"model_uri": model_file, "model_digest": "0x" + keccak_digest(model).hex(),
         "subset_size": len(data["y_test"])})
    print(json.dumps(digests), flush=True)
    if group is not None:
        parallel.stop_processes()
    del jax


if __name__ == "__main__":
    main()
