"""Data parallelism that keeps one digest: the same spec and coin give the same result on 1, 2, 4
and 8 virtual CPU devices (a fresh process per device count, as a worker's job runs), for the MLP
and the conv job; another micro-batch count gives another digest; and plain data parallelism
(`pmean`) on the same devices does not agree with itself, so these tests can fail.

Default run: small shapes, a few steps. CROWDML_PARALLEL_FULL=1 adds an MNIST-shaped MLP (784
inputs, where XLA's thread pool changes a matmul's bits) and the synthetic CIFAR-shaped conv job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job_support import job_process, job_python
from crowdml_compute.data import export_digits
from crowdml_compute.parallel import devices_for
from crowdml_compute.profile import PROFILES
from crowdml_compute.runner import run_job
from crowdml_compute.spec import make_spec, save_spec
from ape_crowdml.errors import EnvironmentMismatch, SpecError

REPO = Path(__file__).resolve().parents[2]
MLP_JOB = REPO / "jobs" / "train_classifier.py"
CONV_JOB = REPO / "jobs" / "train_conv.py"
COIN = bytes.fromhex("c0" * 32)
MICRO_BATCHES = 8
FULL = os.environ.get("CROWDML_PARALLEL_FULL") == "1"
# One process per count; 4 devices only in the full run (1, 2 and 8 already span a device, a
# split and the profile's most), to keep `make test` short.
DEVICE_COUNTS = (1, 2, 4, 8) if FULL else (1, 2, 8)
DIGITS_ACCURACY = 0.9  # the conv job on digits after 3 epochs (measured 95.3 %); chance is 10 %

MLP = {"hidden": [32], "batch_size": 64, "micro_batches": MICRO_BATCHES, "epochs": 1,
       "steps_per_epoch": 3}
CONV = {"features": [8], "dense": 16, "batch_size": 32, "micro_batches": MICRO_BATCHES,
        "epochs": 1, "steps_per_epoch": 2}

# One job process per device count, as a worker's: the profile applied before jax loads, then
# every spec run through the runner's own `execute`, then plain pmean training of the MLP (no
# dropout, SGD) next to the same loop through the fixed-order path, for the control.
CHILD = """
import json, sys
from crowdml_compute.profile import apply_environment
from crowdml_compute.spec import load_spec

devices, coin, specs = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3:]
apply_environment(load_spec(specs[0]).profile, devices)
from crowdml_compute.runner import execute
digests = {}
for path in specs:
    spec = load_spec(path)
    if spec.hparams["micro_batches"] % devices == 0:
        digests[path] = "0x" + execute(spec, coin, devices=devices).digest.hex()

import hashlib, jax, numpy as np, optax
from crowdml_compute import parallel
from crowdml_compute.data import load_dataset
from crowdml_compute.runner import load_job
spec = load_spec(specs[0])
job, data = load_job(spec), load_dataset(spec.data_uri, spec.data_digest)
model = job.MLP(hidden=(32,), classes=10, dropout=0.0)
x = np.asarray(data["x_train"][:64].reshape(64, -1)); y = np.asarray(data["y_train"][:64], np.int32)
params = model.init(jax.random.key(0), x[:1], train=False)["params"]
mesh = parallel.device_mesh(8)
def loss_fn(params, batch, key):
    logits = model.apply({"params": params}, batch[0], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
def train(gradient):
    step = jax.jit(lambda p: jax.tree_util.tree_map(lambda w, g: w - 0.1 * g, p,
                                                    gradient(p)[1]))
    p = params
    for _ in range(3):
        p = step(p)
    leaves = jax.tree_util.tree_leaves(p)
    return hashlib.sha256(b"".join(np.asarray(l).tobytes() for l in leaves)).hexdigest()
key = jax.random.key(1)
digests["pmean"] = train(lambda p: parallel.pmean_gradient(loss_fn, p, (x, y), key, mesh=mesh))
digests["fixed"] = train(lambda p: parallel.mean_gradient(loss_fn, p, (x, y), key, mesh=mesh,
                                                          micro_batches=8))
print(json.dumps(digests))
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    export_digits(path)
    return path


def run_devices(devices: int, spec_paths: list[Path]) -> dict[str, str]:
    python, env = job_python()  # cpu-exact's job environment
    child = subprocess.run([*python, "-c", CHILD, str(devices), COIN.hex(),
                            *map(str, spec_paths)], capture_output=True, text=True, cwd=REPO,
                           env=env)
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    """{device count: {spec path or control name: digest}}, one process per count."""
    folder = tmp_path_factory.mktemp("parallel")
    specs = {"mlp": make_spec(MLP_JOB, digits, MLP),
             "mlp_k4": make_spec(MLP_JOB, digits, {**MLP, "micro_batches": 4}),
             "conv": make_spec(CONV_JOB, digits, CONV)}
    if FULL:
        specs["mnist"] = make_spec(MLP_JOB, mnist_shaped(folder / "mnist.npz"),
                                   {"hidden": [512], "batch_size": 128, "epochs": 1,
                                    "steps_per_epoch": 4, "micro_batches": MICRO_BATCHES})
        specs["cifar"] = make_spec(CONV_JOB, digits, cifar_hparams(128, 32))
    paths = {name: save_spec(spec, folder / f"{name}.json") for name, spec in specs.items()}
    results = {d: run_devices(d, list(paths.values())) for d in DEVICE_COUNTS}
    return {d: {name: result.get(str(path)) for name, path in paths.items()}
            | {"pmean": result["pmean"], "fixed": result["fixed"]}
            for d, result in results.items()}


def mnist_shaped(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((512, 784), np.float32),
             y_train=rng.integers(0, 10, 512).astype(np.uint8),
             x_test=rng.random((128, 784), np.float32),
             y_test=rng.integers(0, 10, 128).astype(np.uint8))
    return path


def cifar_hparams(n_train: int, batch_size: int) -> dict:
    synthetic = {"seed": 7, "n_train": n_train, "n_test": 64}
    # The job's own synthetic set and its digest, in the job environment (the job imports jax).
    script = ("import json, sys; from crowdml_compute.jobs import load_job_file; "
              "conv, _ = load_job_file(sys.argv[1]); "
              "print(conv.synthetic_digest(conv.synthetic_cifar(**json.loads(sys.argv[2]))))")
    python, env = job_python()
    child = subprocess.run(python + ["-c", script, str(CONV_JOB), json.dumps(synthetic)],
                           capture_output=True, text=True, env=env)
    assert child.returncode == 0, child.stderr
    digest = child.stdout.strip()
    return {"batch_size": batch_size, "micro_batches": MICRO_BATCHES, "epochs": 1,
            "steps_per_epoch": 2, "synthetic": {**synthetic, "digest": digest}}


@pytest.mark.parametrize("job", ["mlp", "conv"] + (["mnist", "cifar"] if FULL else []))
def test_one_digest_on_1_2_4_and_8_devices(runs, job):  # 4: in the full run
    digests = {d: runs[d][job] for d in DEVICE_COUNTS}
    assert len(set(digests.values())) == 1, digests


def test_another_micro_batch_count_gives_another_digest(runs):
    # 8 devices cannot share 4 micro-batches; 1, 2 and 4 agree on K = 4.
    assert runs[8]["mlp_k4"] is None
    assert len({runs[d]["mlp_k4"] for d in DEVICE_COUNTS if d <= 4}) == 1
    assert runs[1]["mlp_k4"] != runs[1]["mlp"]


def test_control_plain_pmean_differs_between_one_and_two_devices(runs):
    """The same loop, data and model: only the reduction differs."""
    assert runs[1]["pmean"] != runs[2]["pmean"]
    assert len({runs[d]["fixed"] for d in DEVICE_COUNTS}) == 1


def test_run_job_on_devices_agrees_with_the_job_processes(runs, digits):
    """run_job (a fresh sealed process, `--devices`) gives the digest of the processes above."""
    result = run_job(make_spec(CONV_JOB, digits, CONV), COIN, devices=4)
    assert "0x" + result.digest.hex() == runs[1]["conv"]


@pytest.mark.slow  # the digests on 1, 2 and 8 devices agree (above); this trains to accuracy
def test_conv_job_learns_digits_on_two_devices(digits):
    spec = make_spec(CONV_JOB, digits, {"epochs": 3, "batch_size": 32, "learning_rate": 0.01,
                                        "micro_batches": 4})
    result = run_job(spec, COIN, devices=2)
    assert result.metrics["test_accuracy"] >= DIGITS_ACCURACY, result.metrics


def test_devices_used_are_a_divisor_of_micro_batches_within_the_offer_and_profile():
    cpu = PROFILES["cpu-exact"]
    assert devices_for(cpu, 8, 8) == 8
    assert devices_for(cpu, 8, 6) == 4
    assert devices_for(cpu, 6, 4) == 3
    assert devices_for(cpu, 7, 4) == 1
    assert devices_for(cpu, 64, 64) == PROFILES["cpu-exact"].xla_threads  # more would enlarge XLA's pool
    unpinned = cpu.model_copy(update={"xla_threads": None, "cpu_threads": None})
    assert devices_for(unpinned, 8, 8) == 1
    assert devices_for(PROFILES["gpu-exact"], 16, 16) == 16
    with pytest.raises(EnvironmentMismatch, match="at least 1"):
        devices_for(cpu, 8, 0)


def test_runner_refuses_more_devices_than_the_profile_allows_or_k_shares(digits, tmp_path):
    pinned = make_spec(MLP_JOB, digits, {**MLP, "micro_batches": 4, "arithmetic": "float"},
                       profile="cpu-exact")
    with pytest.raises(EnvironmentMismatch, match="1 to 8 devices, not 16"):
        run_job(pinned, COIN, devices=16)
    spec = make_spec(MLP_JOB, digits, {**MLP, "micro_batches": 4})  # portable: no device limit
    with pytest.raises(SpecError, match="16 devices cannot share 4 micro-batches"):
        run_job(spec, COIN, devices=16)
    with pytest.raises(SpecError, match="3 devices cannot share 4 micro-batches"):
        run_job(spec, COIN, devices=3)
    with pytest.raises(SpecError, match="--devices must be at least 1"):
        run_job(spec, COIN, devices=0)


@pytest.mark.parametrize("job", [MLP_JOB, CONV_JOB])
def test_batch_must_split_into_micro_batches(digits, job):
    with pytest.raises(SpecError, match="does not split into 5 micro_batches"):
        make_spec(job, digits, {"batch_size": 32, "micro_batches": 5})


def test_synthetic_set_is_refused_unless_its_digest_matches(digits):
    hparams = cifar_hparams(16, 16)
    hparams["synthetic"]["digest"] = "0x" + "00" * 32
    from ape_crowdml.errors import DataDigestMismatch

    with pytest.raises(DataDigestMismatch, match="synthetic set of seed 7"):
        run_job(make_spec(CONV_JOB, digits, hparams), COIN)


# Several processes on one machine (jax.distributed over loopback, gloo collectives on CPU),
# each with its share of the devices: one mean_gradient call over a mesh of all of them.
MULTI_PROCESS_CHILD = """
import hashlib, sys
process, processes, local, port = map(int, sys.argv[1:5])
from crowdml_compute.profile import PROFILES, apply_environment
apply_environment(PROFILES["cpu-exact"], local)
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from crowdml_compute import parallel
from crowdml_compute.keys import configure_jax
configure_jax(PROFILES["cpu-exact"].jax_config)
parallel.configure_devices(PROFILES["cpu-exact"], local)
if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process)
mesh = parallel.device_mesh(8)
rng = np.random.default_rng(0)
arrays = (rng.standard_normal((784, 64), np.float32) * 0.05, rng.random((256, 784), np.float32),
          rng.integers(0, 10, 256).astype(np.int32))
w, x, y = (jax.device_put(a, NamedSharding(mesh, P())) for a in arrays)
def loss_fn(w, batch, key):
    logits = jnp.tanh(batch[0] @ w)[:, :10] + jax.random.normal(key, (10,))
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(batch[1].shape[0]), batch[1]])
gradient = jax.jit(lambda w, x, y: parallel.mean_gradient(
    loss_fn, w, (x, y), jax.random.key(0), mesh=mesh, micro_batches=8)[1])
bits = np.asarray(gradient(w, x, y).addressable_data(0)).tobytes()
print(len(jax.devices()), hashlib.sha256(bits).hexdigest(), flush=True)
if processes > 1:
    jax.distributed.shutdown()  # together: the coordinator (process 0) must not leave first
"""


def test_processes_on_loopback_agree_with_one_process(tmp_path):
    """2 processes × 2 devices (jax.distributed on 127.0.0.1) give one process's bits on 4."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    python, env = job_python()

    def start(process: int, processes: int, local: int) -> subprocess.Popen:
        # Output to files: a full pipe would block one process while the other waits for it.
        log = tmp_path / f"{processes}-{process}"
        return subprocess.Popen([*python, "-c", MULTI_PROCESS_CHILD, str(process),
                                 str(processes), str(local), str(port)], cwd=REPO, env=env,
                                stdout=open(log.with_suffix(".out"), "w"),
                                stderr=open(log.with_suffix(".err"), "w"))

    children = [start(0, 2, 2), start(1, 2, 2)]
    codes = [child.wait(timeout=300) for child in children] + [start(0, 1, 4).wait(timeout=300)]
    # The last line: gloo (jax 0.11) prints its own connection lines on stdout first.
    lines = {path.name: (path.read_text().strip().splitlines() or [""])[-1]
             for path in tmp_path.glob("*.out")}
    errors = {path.name: path.read_text()[-500:] for path in tmp_path.glob("*.err")}
    assert codes == [0, 0, 0] and all(lines.values()) and len(lines) == 3, errors
    assert len(set(lines.values())) == 1 and lines["1-0.out"].startswith("4 "), lines


def run_group(tmp_path: Path, specs: list[Path], coins: list[bytes]):
    """Runner processes 0 … n-1 of one group on 127.0.0.1, 2 devices each: process i runs
    specs[i] with coins[i]. Returns (exit codes, stdouts, stderrs)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command, env = job_process()
    group = [subprocess.Popen(
        command + ["--spec", str(spec), "--coin", "0x" + coin.hex(), "--devices", "2",
                   "--no-progress", "--coordinator", f"127.0.0.1:{port}", "--processes",
                   str(len(specs)), "--process-id", str(process)],
        env=env, cwd=REPO, stdout=open(tmp_path / f"{process}.out", "w"),
        stderr=open(tmp_path / f"{process}.err", "w"))
        for process, (spec, coin) in enumerate(zip(specs, coins))]
    codes = [process.wait(timeout=300) for process in group]
    return (codes, [(tmp_path / f"{i}.out").read_text() for i in range(len(specs))],
            [(tmp_path / f"{i}.err").read_text() for i in range(len(specs))])


@pytest.mark.parametrize("job", [MLP_JOB] + ([CONV_JOB] if FULL else []),
                         ids=["mlp", "conv"][:1 + FULL])
def test_the_runner_runs_one_job_over_two_processes_with_one_process_bits(digits, tmp_path, job):
    """`python -m crowdml_compute.runner --coordinator … --processes 2 --process-id i`:
    2 processes × 2 devices (jax.distributed on 127.0.0.1) each give the digest of the same
    spec run in one process on one device."""
    hparams = {**(MLP if job == MLP_JOB else CONV), "epochs": 1, "steps_per_epoch": 2}
    spec = make_spec(job, digits, hparams)
    alone = run_job(spec, COIN, devices=1)
    spec_path = save_spec(spec, tmp_path / "spec.json")
    codes, outs, errors = run_group(tmp_path, [spec_path] * 2, [COIN] * 2)
    assert codes == [0, 0], errors
    assert [out.split()[-1] for out in outs] == ["0x" + alone.digest.hex()] * 2


def test_a_group_given_other_work_or_with_one_refusal_stops_before_training(digits, tmp_path):
    """Processes given other coins would mix two runs' gradients into a digest of neither:
    each refuses. One process refusing (its data is missing) makes every process refuse."""
    spec = make_spec(MLP_JOB, digits, {**MLP, "epochs": 1, "steps_per_epoch": 2})
    spec_path = save_spec(spec, tmp_path / "spec.json")
    other_coin = COIN[:-1] + bytes([COIN[-1] ^ 1])
    codes, outs, errors = run_group(tmp_path, [spec_path] * 2, [COIN, other_coin])
    # No digest printed (gloo may print its own connection lines on stdout).
    assert codes == [2, 2] and "0x" not in "".join(outs), (outs, errors)
    assert all(e.endswith("were given other specs, coins or device counts; give each the "
                          "same\n") for e in errors), errors
    missing = save_spec(spec.model_copy(update={"data_uri": str(tmp_path / "gone.npz")}),
                        tmp_path / "missing.json")
    codes, outs, errors = run_group(tmp_path, [spec_path, missing], [COIN] * 2)
    assert codes == [2, 2], errors
    assert "process 1 of the group refused the job" in errors[0]
    assert "cannot read" in errors[1] and errors[1].count("\n") == 1, errors[1]


def test_a_process_group_needs_all_three_options(tmp_path, digits):
    command, env = job_process()
    spec_path = save_spec(make_spec(MLP_JOB, digits, MLP), tmp_path / "spec.json")
    child = subprocess.run(command + ["--spec", str(spec_path), "--coin", "0x" + COIN.hex(),
                                      "--coordinator", "127.0.0.1:1"],
                           capture_output=True, text=True, env=env)
    assert child.returncode == 2 and child.stderr == (
        "crowdml: --coordinator, --processes and --process-id go together\n")
    no_port = subprocess.run(command + ["--spec", str(spec_path), "--coin", "0x" + COIN.hex(),
                                        "--coordinator", "localhost", "--processes", "2",
                                        "--process-id", "0"], capture_output=True, text=True,
                             env=env)
    assert no_port.returncode == 2 and no_port.stderr == (
        "crowdml: --coordinator 'localhost' is not HOST:PORT\n")


def test_a_worker_runs_a_job_on_the_divisor_of_k_within_its_offer(digits):
    """`crowdml: worker: devices:` is an offer: 6 devices run K = 8 on 4, a job without
    micro-batches (the MLP's default K = 1) on 1."""
    from types import SimpleNamespace

    from ape_crowdml.config import WorkerPolicy
    from ape_crowdml.parties import Worker

    worker = SimpleNamespace(config=SimpleNamespace(worker=WorkerPolicy(devices=6)))
    assert Worker.devices_for(worker, make_spec(MLP_JOB, digits, MLP)) == 4
    assert Worker.devices_for(worker, make_spec(MLP_JOB, digits, {"epochs": 1})) == 1
