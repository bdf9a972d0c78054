"""Unit tests of the job side's pure parts: encoding, digests, keys, spec, data, environment."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from crowdml_compute import digest
from crowdml_compute.data import export_digits, load_dataset
from ape_crowdml.errors import DataDigestMismatch, EnvironmentMismatch, SpecError
from crowdml_compute.profile import (PROFILES, Profile, check_environment, check_profile,
                                 environment_for)
from crowdml_compute.spec import load_spec, make_spec, parse_spec

KECCAK_EMPTY = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_keccak_is_ethereums_not_sha3():
    assert digest.keccak_digest(b"").hex() == KECCAK_EMPTY


def test_file_digest_reads_large_files_in_chunks(tmp_path):
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 5)
    (tmp_path / "f").write_bytes(data)
    assert digest.file_digest(tmp_path / "f") == digest.keccak_digest(data)


def test_pytree_encoding_is_the_documented_format():
    tree = {"p": {"w": np.array([[1, 2]], dtype=">i2")}, "a": np.float32(0.5)}
    expected = b"".join([
        b"crowdml/pytree/v1\n", struct.pack("<I", 2),
        struct.pack("<I", 1), b"a", struct.pack("<I", 3), b"<f4", struct.pack("<I", 0),
        struct.pack("<Q", 4), struct.pack("<f", 0.5),
        struct.pack("<I", 3), b"p/w", struct.pack("<I", 3), b"<i2", struct.pack("<IQQ", 2, 1, 2),
        struct.pack("<Q", 4), struct.pack("<hh", 1, 2),
    ])
    assert digest.encode_pytree(tree) == expected


def test_pytree_encoding_ignores_insertion_order_and_round_trips():
    a = {"params": {"Dense_1": {"kernel": np.ones((2, 3), np.float32)},
                    "Dense_0": {"bias": np.arange(3, dtype=np.int32)}}}
    b = {"params": {"Dense_0": a["params"]["Dense_0"], "Dense_1": a["params"]["Dense_1"]}}
    assert digest.encode_pytree(a) == digest.encode_pytree(b)
    back = digest.decode_pytree(digest.encode_pytree(a))
    assert digest.encode_pytree(back) == digest.encode_pytree(a)
    assert back["params"]["Dense_1"]["kernel"].dtype == np.float32


def test_pytree_encoding_separates_dtype_and_shape():
    base = digest.encode_pytree({"x": np.zeros(4, np.float32)})
    assert digest.encode_pytree({"x": np.zeros(4, np.int32)}) != base
    assert digest.encode_pytree({"x": np.zeros((2, 2), np.float32)}) != base


def test_decode_refuses_foreign_bytes():
    with pytest.raises(ValueError, match="magic"):
        digest.decode_pytree(b"\x81\xa6params")
    with pytest.raises(ValueError, match="truncated"):
        digest.decode_pytree(digest.encode_pytree({"x": np.zeros(3)})[:-1])


def test_bits_encoding_is_msb_first_with_count_in_whole_words():
    encoded = digest.encode_bits([1, 0, 1, 1, 0, 0, 0, 0, 1])
    body = bytes([0b10110000, 0b10000000]) + bytes(30)
    assert encoded == b"crowdml/bits/v2\n" + (9).to_bytes(32, "big") + body
    assert digest.decode_bits(encoded).tolist() == [1, 0, 1, 1, 0, 0, 0, 0, 1]
    with pytest.raises(ValueError):
        digest.encode_bits([0, 2])


@pytest.mark.parametrize("n", [1, 7, 8, 9, 255, 256, 257, 1000])
def test_bits_round_trip_at_word_and_byte_edges(n):
    bits = (np.arange(n) * 7919 % 3 == 0).astype(np.uint8)
    encoded = digest.encode_bits(bits)
    assert len(encoded) == 16 + 32 + 32 * -(-n // 256)
    assert digest.decode_bits(encoded).tolist() == bits.tolist()


def test_bits_decoding_refuses_padding_and_trailing_bytes():
    encoded = digest.encode_bits([1, 0, 1])
    with pytest.raises(ValueError, match="padding"):
        digest.decode_bits(encoded[:-1] + b"\x01")
    with pytest.raises(ValueError, match="trailing"):
        digest.decode_bits(encoded + b"\x00")


@pytest.fixture
def digits(tmp_path):
    path = tmp_path / "digits.npz"
    export_digits(path)
    return path


def test_exported_digits_are_byte_identical_across_processes(digits, tmp_path):
    script = ("from crowdml_compute.data import export_digits; "
              f"print(export_digits({str(tmp_path / 'b.npz')!r}).hex())")
    from job_support import job_python

    python, env = job_python()  # another process, with numpy 2 and another scikit-learn
    child = subprocess.run([*python, "-c", script], capture_output=True, text=True, env=env)
    assert child.stdout.strip() == digest.file_digest(digits).hex()


def test_load_dataset_checks_the_digest_first(digits, tmp_path):
    good = digest.file_digest(digits)
    data = load_dataset(str(digits), good)
    assert data["x_train"].dtype == np.float32 and data["y_test"].dtype == np.uint8
    assert len(data["x_train"]) + len(data["x_test"]) == 1797
    with pytest.raises(DataDigestMismatch, match="expects"):
        load_dataset(str(digits), bytes(32))
    with pytest.raises(DataDigestMismatch, match="cannot read"):
        load_dataset(f"file://{tmp_path}/absent.npz", good)
    other = tmp_path / "other.npz"
    np.savez(other, x_train=np.zeros(1))
    with pytest.raises(DataDigestMismatch, match="lacks arrays"):
        load_dataset(str(other), digest.file_digest(other))


def test_spec_digest_is_keccak_of_sorted_compact_json(digits):
    spec = make_spec("jobs/train_classifier.py", digits, {"epochs": 3, "batch_size": 32})
    text = spec.canonical_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode()
    assert spec.digest() == digest.keccak_digest(text)
    reordered = make_spec("jobs/train_classifier.py", digits, {"batch_size": 32, "epochs": 3})
    assert reordered.digest() == spec.digest()
    assert make_spec("jobs/train_classifier.py", digits, {"epochs": 4}).digest() != spec.digest()
    assert parse_spec(text) == spec


def test_load_spec_errors_are_one_line(tmp_path):
    cases = {"missing": None, "garbage": "[1,", "extra": '{"job": "x", "oops": 1}'}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert "\n" not in str(info.value)


def test_make_spec_refuses_missing_files(digits):
    with pytest.raises(SpecError, match="does not exist"):
        make_spec("jobs/no_such_job.py", digits, {})


def test_this_machine_matches_cpu_exact_and_a_changed_pin_is_named():
    from crowdml_compute import child

    # cpu-exact is checked in its job environment's interpreter, as a worker does.
    child.check_environment(PROFILES["cpu-exact"])
    with pytest.raises(EnvironmentMismatch, match="numpy==2.0.0, this machine has 2.5.2"):
        child.check_environment(PROFILES["cpu-exact"].model_copy(
            update={"packages": {**PROFILES["cpu-exact"].packages, "numpy": "2.0.0"}}))
    # In this process: a profile pinning this process's own Python and packages.
    from importlib.metadata import version

    profile = PROFILES["cpu-exact"].model_copy(update={
        "python": "%d.%d" % sys.version_info[:2], "native": {},
        "packages": {"numpy": version("numpy"), "pydantic": version("pydantic")}})
    check_environment(profile)
    pinned_elsewhere = profile.model_copy(update={"packages": {**profile.packages,
                                                                "numpy": "2.0.0"}})
    with pytest.raises(EnvironmentMismatch, match="numpy==2.0.0"):
        check_environment(pinned_elsewhere)
    with pytest.raises(EnvironmentMismatch, match="riscv64"):
        check_environment(profile.model_copy(update={"machine": "riscv64"}))


def test_cpu_exact_flags_replace_the_callers():
    env = environment_for(PROFILES["cpu-exact"])
    flags = env["XLA_FLAGS"].split()
    assert "--xla_cpu_enable_fast_math=false" in flags
    assert "--xla_cpu_max_isa=AVX2" in flags
    assert env["PJRT_NPROC"] == "8"  # the pool stays at 8 threads for 1 to 8 devices
    gpu = environment_for(PROFILES["gpu-exact"])
    assert gpu["NVIDIA_TF32_OVERRIDE"] == "0"
    assert "--xla_gpu_deterministic_ops=true" in gpu["XLA_FLAGS"]


TRAIN = "jobs/train_classifier.py"


def test_equivalent_hparams_give_one_spec_digest(digits):
    variants = [{"epochs": 2}, {"epochs": 2.0}, {"epochs": "2"}, {"epochs": 2, "batch_size": 64},
                {"epochs": 2, "momentum": None}, {"epochs": 2, "steps_per_epoch": None}]
    digests = {make_spec(TRAIN, digits, h).digest() for h in variants}
    assert len(digests) == 1
    spec = make_spec(TRAIN, digits, variants[0])
    assert make_spec(TRAIN, digits, spec.hparams).hparams == spec.hparams  # a fixed point
    sgd = make_spec(TRAIN, digits, {"optimizer": "sgd"})
    assert sgd.hparams["momentum"] == 0.9  # sgd states its momentum; adam has none
    assert make_spec(TRAIN, digits, {**sgd.hparams, "momentum": 0.9}).digest() == sgd.digest()


@pytest.mark.parametrize("hparams, phrase", [
    ({"epochs": True}, "boolean"),
    ({"hidden": [512, False]}, "boolean"),
    ({"learning_rate": float("nan")}, "finite"),
    ({"learning_rate": float("inf")}, "finite"),
    ({"epochs": 2, "momentum": 0.9}, "sgd optimizer only"),
    ({"epochs": 2, "seed": 1}, "seed"),
    ({"epochs": 2.5}, "epochs"),
])
def test_make_spec_refuses_hparams_with_no_single_meaning(digits, hparams, phrase):
    with pytest.raises(SpecError, match=phrase):
        make_spec(TRAIN, digits, hparams)


def test_a_spec_with_non_finite_hparams_is_not_valid(digits):
    text = make_spec(TRAIN, digits, {}).canonical_json().replace(b'"epochs":20', b'"epochs":NaN')
    with pytest.raises(SpecError, match="finite"):
        parse_spec(text)


def test_worker_variables_are_not_passed_to_the_job():
    profile = PROFILES["cpu-exact"]
    worker = {"PATH": "/usr/bin", "HOME": "/home/w", "PYTHONPATH": "/src", "AWS_PROFILE": "data",
              "JAX_RANDOM_SEED_OFFSET": "1", "FLAX_FIX_RNG_SEPARATOR": "1", "JAX_DISABLE_JIT": "1",
              "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "EAGER_CONSTANT_FOLDING": "1",
              "JAX_NUMPY_DTYPE_PROMOTION": "strict", "JAX_COMPILATION_CACHE_DIR": "/tmp/c",
              "XLA_FLAGS": "--xla_cpu_enable_fast_math=true", "TF_CPP_MIN_LOG_LEVEL": "0",
              "PJRT_NPROC": "2", "NPROC": "2", "JAX_PLATFORMS": "cuda",
              "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL": "0", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    env = environment_for(profile, worker)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/w", "PYTHONPATH": "/src",
                   "AWS_PROFILE": "data", "JAX_PLATFORMS": "cpu", "PJRT_NPROC": "8",
                   "DNNL_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": " ".join(profile.xla_flags)}


def test_a_weakened_or_foreign_profile_is_refused_unless_accepted():
    builtin = PROFILES["cpu-exact"]
    check_profile(builtin)
    check_profile(Profile.model_validate_json(builtin.model_dump_json()))  # as read from a spec
    weakened = builtin.model_copy(update={"xla_flags": ("--xla_cpu_enable_fast_math=true",)})
    unpinned = builtin.model_copy(update={"cpu_threads": None})
    other_code = builtin.model_copy(update={"code": "0x" + "00" * 32})
    renamed = builtin.model_copy(update={"name": "mine"})
    for profile, phrase in ((weakened, "in xla_flags"), (unpinned, "cpu_threads .None, built in 1"),
                            (other_code, "another crowdml version"), (renamed, "neither built in")):
        with pytest.raises(EnvironmentMismatch, match=phrase):
            check_profile(profile)
    check_profile(weakened, accepted=[weakened])  # the worker's own choice, in its config


def test_worker_policy_refuses_a_weakened_profile_before_any_deposit(digits, tmp_path):
    from ape_crowdml.config import WorkerPolicy
    from ape_crowdml.board import NEUTRAL_SINK
    from crowdml_compute.jobs import JobRegistry
    from ape_crowdml.policy import check_policy

    spec = make_spec(TRAIN, digits, {})
    weakened = spec.model_copy(update={"profile": spec.profile.model_copy(
        update={"xla_flags": ("--xla_cpu_enable_fast_math=true",)})})
    task = SimpleNamespace(task_id=1, deposit=10, reward=10, workers=2, join_blocks=10,
                           commit_blocks=10, reveal_blocks=10)  # what the policy reads
    jobs = JobRegistry()
    check_policy(task, spec, WorkerPolicy(), jobs, NEUTRAL_SINK)
    with pytest.raises(EnvironmentMismatch, match="xla_flags"):
        check_policy(task, weakened, WorkerPolicy(), jobs, NEUTRAL_SINK)
    accepting = WorkerPolicy(accept_profiles=[weakened.profile.model_dump(mode="json")])
    check_policy(task, weakened, accepting, jobs, NEUTRAL_SINK)
