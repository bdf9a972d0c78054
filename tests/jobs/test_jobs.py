"""End-to-end job tests: real runs in child processes under the cpu-exact profile, in its job
environment (Python 3.12, current jax; crowdml_compute/jobenv.py).

Plain pytest (no ape fixtures). The trained artifact is session-scoped; each other run is one
fresh process (~4 s: jax import, compile, train).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from crowdml_compute.data import export_digits
from crowdml_compute.digest import decode_bits, decode_pytree, file_digest
from ape_crowdml.errors import CanaryMismatch, DataDigestMismatch, SpecError
from crowdml_compute.runner import check_canary, run_job, with_canary
from crowdml_compute.spec import Canary, make_spec, save_spec
from job_support import job_process, job_python

REPO = Path(__file__).resolve().parents[2]
TRAIN_JOB = REPO / "jobs" / "train_classifier.py"
EVAL_JOB = REPO / "jobs" / "evaluate_classifier.py"
COIN = bytes.fromhex("5eed" * 16)
EPOCHS = 10


def hexd(digest: bytes) -> str:
    return "0x" + digest.hex()


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    export_digits(path)
    return path


@pytest.fixture(scope="session")
def train_spec(digits):
    return make_spec(TRAIN_JOB, digits, {"epochs": EPOCHS})


@pytest.fixture(scope="session")
def trained(train_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return run_job(train_spec, COIN, out=out), out / "result.bin"


def cli(spec_path, coin: bytes = COIN, env=None, **popen):
    """The runner's own command line, in cpu-exact's job environment."""
    command, env = job_process(env=env)
    return subprocess.run(command + ["--spec", str(spec_path), "--coin", hexd(coin),
                                     "--no-progress"],
                          capture_output=True, text=True, cwd=REPO, env=env, **popen)


def mlp_predict(params: dict, x: np.ndarray) -> np.ndarray:
    """Independent numpy forward pass of train_classifier's MLP, to check the job's figures."""
    x = x.reshape(len(x), -1).astype(np.float32)
    layers = [params[f"Dense_{i}"] for i in range(len(params))]
    for layer in layers[:-1]:
        x = np.maximum(x @ layer["kernel"] + layer["bias"], 0)
    return (x @ layers[-1]["kernel"] + layers[-1]["bias"]).argmax(-1)


def test_same_coin_in_a_second_process_gives_the_same_digest(train_spec, trained):
    result, _ = trained
    again = run_job(train_spec, COIN)
    assert again.digest == result.digest
    assert again.transcript == result.transcript


def test_transcript_has_one_digest_per_epoch_ending_in_the_result(trained):
    result, artifact_path = trained
    assert len(result.transcript) == EPOCHS
    assert len(set(result.transcript)) == EPOCHS
    assert result.transcript[-1] == hexd(result.digest)
    assert file_digest(artifact_path) == result.digest


def test_digest_independent_of_cpu_affinity_and_callers_xla_flags(train_spec, trained, tmp_path):
    result, _ = trained
    spec_path = save_spec(train_spec, tmp_path / "spec.json")
    for cpus in ({0}, {1}):  # the trained fixture ran with every allowed CPU
        if not cpus <= os.sched_getaffinity(0):
            continue
        pinned = cli(spec_path, preexec_fn=lambda cpus=cpus: os.sched_setaffinity(0, cpus))
        assert pinned.returncode == 0, pinned.stderr
        assert pinned.stdout.strip() == hexd(result.digest), cpus
    # A caller's own XLA_FLAGS (threaded Eigen, uncapped ISA) must not leak into the job.
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --xla_cpu_max_isa=AVX512"}
    other_flags = cli(spec_path, env=env)
    assert other_flags.returncode == 0, other_flags.stderr
    assert other_flags.stdout.strip() == hexd(result.digest)


@pytest.mark.slow  # tests/jobs/test_jobs_warm.py runs jobs after jobs in one process
def test_fresh_jit_compile_in_one_process_gives_the_same_digest(train_spec, trained, tmp_path):
    result, _ = trained
    spec_path = save_spec(train_spec, tmp_path / "spec.json")
    script = textwrap.dedent(f"""
        from crowdml_compute.profile import apply_environment
        from crowdml_compute.runner import execute
        from crowdml_compute.spec import load_spec
        spec = load_spec({str(spec_path)!r})
        apply_environment(spec.profile)
        import jax
        first = execute(spec, bytes.fromhex({COIN.hex()!r}))
        jax.clear_caches()
        second = execute(spec, bytes.fromhex({COIN.hex()!r}))
        print(first.digest.hex(), second.digest.hex())
    """)
    python, env = job_python()
    child = subprocess.run(python + ["-c", script], capture_output=True, text=True, cwd=REPO,
                           env=env)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [result.digest.hex()] * 2


def test_different_coin_gives_a_different_digest(train_spec, trained):
    result, _ = trained
    flipped = COIN[:-1] + bytes([COIN[-1] ^ 1])  # the coin's last bit
    assert run_job(train_spec, flipped).digest != result.digest


def test_trained_classifier_is_well_above_chance(trained, digits):
    result, artifact_path = trained
    params = decode_pytree(artifact_path.read_bytes())["params"]
    with np.load(digits) as data:
        accuracy = float((mlp_predict(params, data["x_test"]) == data["y_test"]).mean())
    assert accuracy > 0.9  # chance is 0.1; 10 epochs reach 0.953 with this coin
    assert result.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def subset_of_the_coin(coin: bytes, size: int) -> list[int]:
    """jax.random.permutation(draw(base_key(coin), 0), size), drawn in the job environment
    (the plugin has no jax)."""
    script = ("import sys, jax; from crowdml_compute.keys import base_key, draw; "
              "print(*jax.random.permutation(draw(base_key(bytes.fromhex(sys.argv[1])), 0), "
              "int(sys.argv[2])).tolist())")
    python, env = job_python()
    child = subprocess.run(python + ["-c", script, coin.hex(), str(size)], capture_output=True,
                           text=True, cwd=REPO, env=env)
    assert child.returncode == 0, child.stderr
    return [int(i) for i in child.stdout.split()]


def test_evaluation_bitstring_matches_the_model(trained, digits):
    _, artifact_path = trained
    subset_size = 200
    spec = make_spec(EVAL_JOB, digits, {"model_uri": str(artifact_path),
                                        "model_digest": hexd(file_digest(artifact_path)),
                                        "subset_size": subset_size})
    result = run_job(spec, COIN)
    bits = decode_bits(result.artifact)

    params = decode_pytree(artifact_path.read_bytes())["params"]
    with np.load(digits) as data:
        subset = np.asarray(subset_of_the_coin(COIN, len(data["y_test"])))[:subset_size]
        expected = mlp_predict(params, data["x_test"][subset]) == data["y_test"][subset]
    assert bits.tolist() == expected.astype(int).tolist()
    assert result.metrics["accuracy"] == pytest.approx(bits.mean())
    assert run_job(spec, COIN).digest == result.digest


def test_one_bit_data_change_is_refused_before_work(train_spec, digits, tmp_path):
    tampered = tmp_path / "digits.npz"
    data = bytearray(digits.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    spec = train_spec.model_copy(update={"data_uri": str(tampered)})
    with pytest.raises(DataDigestMismatch, match="keccak256"):
        run_job(spec, COIN)


def test_canary_is_reproduced_and_a_wrong_one_refused(train_spec):
    spec = with_canary(train_spec, bytes(32), {"epochs": 1})
    assert check_canary(spec).transcript[-1] == spec.canary.digest
    wrong = spec.model_copy(update={"canary": Canary(coin=spec.canary.coin, hparams={"epochs": 1},
                                                     digest="0x" + "11" * 32)})
    with pytest.raises(CanaryMismatch, match="do not commit"):
        check_canary(wrong)


def test_the_job_is_found_by_digest_never_by_the_specs_path(train_spec, trained, tmp_path):
    edited = tmp_path / "train_classifier.py"
    edited.write_text(TRAIN_JOB.read_text() + "\n# edited\n")
    # The spec's `job` is a label: a path to the edited file does not make the worker run it.
    relabelled = train_spec.model_copy(update={"job": str(edited)})
    assert run_job(relabelled, COIN, job_folders=[tmp_path]).digest == trained[0].digest
    # A spec of the edited job runs only where a configured folder holds that exact file.
    spec = make_spec(edited, train_spec.data_uri, {"epochs": 1})
    with pytest.raises(SpecError, match="no job file with keccak256"):
        run_job(spec, COIN, job_folders=[])
    assert run_job(spec, COIN, job_folders=[tmp_path]).digest


def bad_specs(train_spec, tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (spec file text, a phrase the one-line error must contain)."""
    good = json.loads(train_spec.canonical_json())
    variants = {
        "missing data file": ({**good, "data_uri": str(tmp_path / "absent.npz")}, "cannot read"),
        "wrong data digest": ({**good, "data_digest": "0x" + "ab" * 32}, "expects 0xabab"),
        "another jax": ({**good, "profile": {**good["profile"],
                                            "packages": {**good["profile"]["packages"],
                                                         "jax": "0.4.30"}}}, "jax==0.4.30"),
        "another machine": ({**good, "profile": {**good["profile"], "machine": "aarch64"}},
                            "aarch64"),
        "unknown field": ({**good, "seed": 1}, "seed"),
        "bad hyperparameter": ({**good, "hparams": {"epochs": 0}}, "hparams"),
        "bad digest hex": ({**good, "job_digest": "0x1234"}, "job_digest"),
    }
    texts = {name: (json.dumps(spec), phrase) for name, (spec, phrase) in variants.items()}
    texts["not json"] = ("{ not json", "not a valid job spec")
    return texts


def test_bad_input_gives_one_clear_line_and_exit_2(train_spec, tmp_path):
    missing = cli(tmp_path / "no-such-spec.json")
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    assert "cannot read spec" in missing.stderr
    for name, (text, phrase) in bad_specs(train_spec, tmp_path).items():
        spec_path = tmp_path / f"{name}.json"
        spec_path.write_text(text)
        child = cli(spec_path)
        assert child.returncode == 2, (name, child.stderr)
        assert child.stderr.startswith("crowdml: ") and child.stderr.count("\n") == 1, name
        assert phrase in child.stderr, (name, child.stderr)
        assert child.stdout == ""


def test_gpu_profile_is_refused_on_a_cpu_only_machine(digits, tmp_path):
    from ape_crowdml.errors import EnvironmentMismatch

    spec = make_spec(TRAIN_JOB, digits, {"epochs": 1}, profile="gpu-exact")
    # No environment of the CUDA 13 stack here: refused before a job process starts.
    with pytest.raises(EnvironmentMismatch, match="job stack jax0.11.2-cuda13-py3.12 has no "
                                                  "environment here"):
        run_job(spec, COIN)
    # Run in the CPU stack's interpreter anyway, the job's own checks refuse it.
    child = cli(save_spec(spec, tmp_path / "spec.json"))
    assert child.returncode == 2 and child.stderr.count("\n") == 1, child.stderr
    assert "pins jax-cuda13-" in child.stderr


def test_bad_coin_gives_one_clear_line(train_spec, tmp_path):
    spec_path = save_spec(train_spec, tmp_path / "spec.json")
    command, env = job_process()
    child = subprocess.run(command + ["--spec", str(spec_path), "--coin", "0x1234"],
                           capture_output=True, text=True, env=env)
    assert child.returncode == 2 and child.stderr == "crowdml: coin must be 32 bytes (64 hex " \
        "digits), got 2\n"


def test_each_epochs_loss_is_in_the_summary(trained):
    result, _ = trained
    summary = result.summary()
    assert summary["digest"] == hexd(result.digest) and summary["transcript"] == result.transcript
    losses = [epoch["loss"] for epoch in summary["epochs"]]
    assert len(losses) == EPOCHS and all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 2  # it learns: the mean loss of the last epoch is far lower
    assert json.loads(json.dumps(summary)) == summary  # plain JSON, as it is stored and sent


def test_load_model_predicts_as_the_job_evaluated_without_ape(train_spec, trained, digits,
                                                            tmp_path):
    """The documented call, in the job environment (no ape, no plugin there): the job's own
    module with the delivered parameters gives the test accuracy the job reported."""
    result, artifact_path = trained
    spec_path = save_spec(train_spec, tmp_path / "spec.json")
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from crowdml_compute.model import load_model
        model = load_model({str(artifact_path)!r}, {str(spec_path)!r})
        with np.load({str(digits)!r}) as data:
            accuracy = float((model.predict(data["x_test"]) == data["y_test"]).mean())
        print(json.dumps({{"accuracy": accuracy, "module": type(model.module).__name__,
                           "ape": "ape" in sys.modules}}))
    """)
    command, env = job_python()
    run = subprocess.run(command + ["-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stderr
    said = json.loads(run.stdout.strip().splitlines()[-1])
    assert said == {"accuracy": pytest.approx(result.metrics["test_accuracy"], abs=1e-6),
                    "module": "MLP", "ape": False}


def test_load_model_refuses_what_is_not_a_model(train_spec, tmp_path):
    from crowdml_compute.digest import encode_bits
    from crowdml_compute.model import load_model

    bits = tmp_path / "bits.crowdml"
    bits.write_bytes(encode_bits(np.array([True, False])))
    with pytest.raises(SpecError, match="is not a model's parameters"):
        load_model(bits, train_spec)
