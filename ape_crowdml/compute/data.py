"""Datasets: a `.npz` file with x_train, y_train, x_test, y_test, named in the spec by URI and
keccak256 digest. The digest is checked before the file is parsed, so a worker never spends work
(or trusts numpy's parser) on data other than the requester's.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .digest import file_digest, keccak_digest
from .errors import DataDigestMismatch, first_line

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# Every fifth digit goes to the test set: a fixed rule, and the writers of sklearn's digits are
# spread over the file, so both sides see all of them.
DIGITS_TEST_EVERY = 5


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


CACHE_FOLDER_VARIABLE = "APE_CROWDML_CACHE_FOLDER"


def cache_root() -> Path:
    """The data cache: `crowdml: cache_folder:` in ape-config.yaml (default ~/.cache/crowdml).
    A job's child process reads no config: it is handed the folder in the variable by which ape
    overrides that field."""
    if folder := os.environ.get(CACHE_FOLDER_VARIABLE):
        return Path(folder).expanduser()
    from .host import settings

    return Path(settings().cache_folder).expanduser()


def cache_folder() -> Path:
    """Where remote files are kept under their digest."""
    return cache_root() / "by-digest"


def _as_digest(digest: str | bytes) -> bytes:
    return digest if isinstance(digest, bytes) else bytes.fromhex(digest.removeprefix("0x"))


def _read(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes at `uri`; with `max_bytes`, at most that many are read (one more tells a
    larger file, which is refused without reading the rest)."""
    size = -1 if max_bytes is None else max_bytes + 1
    try:
        if not is_remote(uri):
            with open(uri.removeprefix("file://"), "rb") as f:
                data = f.read(size)
        else:
            import fsspec

            with fsspec.open(uri, "rb") as f:
                data = f.read(size)
    except OSError as exc:
        if not is_remote(uri):
            raise DataDigestMismatch(f"cannot read {uri.removeprefix('file://')}: "
                                     f"{exc.strerror}") from None
        raise DataDigestMismatch(f"cannot fetch {uri}: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - each fsspec backend raises its own errors
        raise DataDigestMismatch(f"cannot fetch {uri}: {first_line(exc)}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DataDigestMismatch(f"{uri} holds more than {max_bytes:,} bytes; refusing it")
    return data


def read_verified(uri: str, expected_digest: str | bytes, *, cached: bool = True,
                  max_bytes: int | None = None) -> bytes:
    """The file's bytes, after checking their keccak256 against `expected_digest`.

    `uri` is a local path, a `file://` URI, or any fsspec URL (https://, s3://, gs://, …).
    Remote bytes that match are kept in a content-addressed cache, where the job's child
    process then finds them; `cached=False` asks the URI itself (a requester checking that
    it serves the data). `max_bytes` caps what is read (a spec's URI, which anyone publishing
    a task names, must not make a worker read without end).
    """
    expected = _as_digest(expected_digest)
    copy = cache_folder() / expected.hex()
    if cached and is_remote(uri) and copy.is_file():
        data = copy.read_bytes()
        if keccak_digest(data) == expected:
            return data
    data = _read(uri, max_bytes)
    actual = keccak_digest(data)
    if actual != expected:
        raise DataDigestMismatch(
            f"{uri} has keccak256 0x{actual.hex()}, the spec expects 0x{expected.hex()}; "
            "fetch the requester's file again"
        )
    if is_remote(uri):
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(copy)
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
