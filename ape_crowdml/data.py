"""Datasets: a `.npz` file with x_train, y_train, x_test, y_test, named in the spec by URI and
keccak256 digest. The digest is checked before the file is parsed, so a worker never spends work
(or trusts numpy's parser) on data other than the requester's.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .digest import file_digest, keccak_digest
from .errors import DataDigestMismatch

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# Every fifth digit goes to the test set: a fixed rule, and the writers of sklearn's digits are
# spread over the file, so both sides see all of them.
DIGITS_TEST_EVERY = 5


def local_path(uri: str) -> Path:
    """A local path for a `file://` URI or a plain path; other schemes are not fetched here."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        raise DataDigestMismatch(f"data URI {uri} is not local; download it and use its path")
    return Path(uri)


def read_verified(uri: str, expected_digest: str | bytes) -> bytes:
    """The file's bytes, after checking their keccak256 against `expected_digest`."""
    path = local_path(uri)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataDigestMismatch(f"cannot read {path}: {exc.strerror}") from None
    expected = expected_digest if isinstance(expected_digest, bytes) else bytes.fromhex(
        expected_digest.removeprefix("0x")
    )
    actual = keccak_digest(data)
    if actual != expected:
        raise DataDigestMismatch(
            f"{path} has keccak256 0x{actual.hex()}, the spec expects 0x{expected.hex()}; "
            "fetch the requester's file again"
        )
    return data


def load_dataset(uri: str, expected_digest: str | bytes) -> dict[str, np.ndarray]:
    """Verify the digest, then load the four arrays (no pickles)."""
    data = read_verified(uri, expected_digest)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        missing = [name for name in ARRAYS if name not in npz.files]
        if missing:
            raise DataDigestMismatch(f"{uri} lacks arrays {', '.join(missing)}")
        return {name: npz[name] for name in ARRAYS}


def export_digits(path: str | Path) -> bytes:
    """Write scikit-learn's bundled digits as a `.npz`; returns its keccak256.

    x is float32 in [0, 1] (pixel / 16, exact in float32), y is uint8. np.savez writes stored
    (uncompressed) zip members with a fixed 1980 timestamp, so the bytes, and the digest, are the
    same on every run (tests/test_jobs_data.py checks it).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.uint8)
    test = np.arange(len(y)) % DIGITS_TEST_EVERY == 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, x_train=x[~test], y_train=y[~test], x_test=x[test], y_test=y[test])
    return file_digest(path)
