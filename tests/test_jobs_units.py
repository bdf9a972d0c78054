"""Unit tests of the job side's pure parts: encoding, digests, keys, spec, data, environment."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from ape_crowdml import digest
from ape_crowdml.data import export_digits, load_dataset
from ape_crowdml.errors import DataDigestMismatch, EnvironmentMismatch, SpecError
from ape_crowdml.profile import PROFILES, check_environment, environment_for
from ape_crowdml.spec import load_spec, make_spec, parse_spec

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


def test_every_bit_of_the_coin_changes_the_base_key():
    import jax

    from ape_crowdml.keys import base_key

    coin = bytes(range(32))
    keys = {jax.random.key_data(base_key(coin)).tobytes()}
    for bit in range(256):
        flipped = bytearray(coin)
        flipped[bit // 8] ^= 1 << (bit % 8)
        keys.add(jax.random.key_data(base_key(bytes(flipped))).tobytes())
    assert len(keys) == 257


def test_key_stream_hands_out_counters_in_order():
    import jax

    from ape_crowdml.keys import KeyStream, draw

    stream = KeyStream(bytes(32))
    first = stream.next()
    assert stream.reserve(5) == 1 and stream.ctr == 6
    data = jax.random.key_data
    assert (data(first) == data(draw(stream.base, 0))).all()
    assert str(jax.random.key_impl(first)) == "threefry2x32"


@pytest.fixture
def digits(tmp_path):
    path = tmp_path / "digits.npz"
    export_digits(path)
    return path


def test_exported_digits_are_byte_identical_across_processes(digits, tmp_path):
    script = ("from ape_crowdml.data import export_digits; "
              f"print(export_digits({str(tmp_path / 'b.npz')!r}).hex())")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
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
    profile = PROFILES["cpu-exact"]
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
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    gpu = environment_for(PROFILES["gpu-exact"])
    assert gpu["NVIDIA_TF32_OVERRIDE"] == "0"
    assert "--xla_gpu_deterministic_ops=true" in gpu["XLA_FLAGS"]
