"""Datasets: a `.npz` file with x_train, y_train, x_test, y_test, named in the spec by URI and
keccak256 digest. The digest is checked before the file is parsed, so a worker never spends work
(or trusts numpy's parser) on data other than the requester's.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from time import monotonic

import numpy as np
from eth_hash.auto import keccak

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


MAX_BYTES_VARIABLE = "APE_CROWDML_MAX_DATA_BYTES"
SECONDS_VARIABLE = "APE_CROWDML_FETCH_SECONDS"
_CHUNK = 1 << 20


def read_limits() -> tuple[int, float]:
    """(bytes, seconds): how much, and for how long, a URI a remote party names may be read.
    A job's process is handed them in the variables above; elsewhere the host's settings
    (the worker's `max_data_bytes`, `fetch_seconds`) hold."""
    from .host import settings

    if os.environ.get(MAX_BYTES_VARIABLE) and os.environ.get(SECONDS_VARIABLE):
        return int(os.environ[MAX_BYTES_VARIABLE]), float(os.environ[SECONDS_VARIABLE])
    host = settings()
    return host.max_data_bytes, host.fetch_seconds


def limit_variables() -> dict[str, str]:
    """The variables that hand this process's read limits to a job's process."""
    max_bytes, seconds = read_limits()
    return {MAX_BYTES_VARIABLE: str(max_bytes), SECONDS_VARIABLE: repr(seconds)}


def _open(uri: str, seconds: float):
    if not is_remote(uri):
        return open(uri.removeprefix("file://"), "rb")
    import fsspec

    options = {}
    if uri.startswith(("http://", "https://")):
        import aiohttp  # fsspec's http backend: every request ends by the deadline

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=seconds)}
    return fsspec.open(uri, "rb", **options)


def _stream(uri: str, sink, max_bytes: int, seconds: float, cancelled: threading.Event):
    """Read `uri` in chunks into `sink` while hashing; the keccak256, or an error."""
    hasher, size = keccak.new(b""), 0
    deadline = monotonic() + seconds
    with _open(uri, seconds) as f:
        while chunk := f.read(min(_CHUNK, max_bytes + 1 - size)):
            size += len(chunk)
            if size > max_bytes:
                raise DataDigestMismatch(f"{uri} holds more than {max_bytes:,} bytes "
                                         "(this worker's max_data_bytes); refusing it")
            if cancelled.is_set() or monotonic() > deadline:
                raise TimeoutError
            hasher.update(chunk)
            sink(chunk)
    return hasher.digest()


def _read_into(uri: str, sink, max_bytes: int | None = None,
               seconds: float | None = None) -> bytes:
    """Stream `uri` into `sink` (a callable taking each chunk) within `read_limits()`, or
    `max_bytes` (or `seconds`) if that is less; returns the keccak256 of what was read.

    The read runs in a thread the caller waits for until the deadline only: a server that
    trickles bytes, or never answers, costs the caller the deadline at most (the thread stops
    at its next chunk, or when the backend's own timeout ends its request)."""
    limit_bytes, limit_seconds = read_limits()
    max_bytes = limit_bytes if max_bytes is None else min(max_bytes, limit_bytes)
    seconds = limit_seconds if seconds is None else min(seconds, limit_seconds)
    outcome: dict = {}
    cancelled = threading.Event()

    def read():
        try:
            outcome["digest"] = _stream(uri, sink, max_bytes, seconds, cancelled)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    reader = threading.Thread(target=read, name=f"crowdml-read {uri}", daemon=True)
    reader.start()
    reader.join(seconds)
    if reader.is_alive() or isinstance(outcome.get("error"), TimeoutError):
        cancelled.set()
        raise DataDigestMismatch(f"{uri} was not read within {seconds:g} s (this worker's "
                                 "fetch_seconds); refusing it")
    error = outcome.get("error")
    if isinstance(error, DataDigestMismatch):
        raise error
    if isinstance(error, OSError) and not is_remote(uri):
        raise DataDigestMismatch(f"cannot read {uri.removeprefix('file://')}: "
                                 f"{error.strerror}") from None
    if error is not None:  # each fsspec backend raises its own errors
        raise DataDigestMismatch(f"cannot fetch {uri}: {first_line(error)}") from None
    return outcome["digest"]


def read_limited(uri: str, max_bytes: int | None = None,
                 seconds: float | None = None) -> tuple[bytes, bytes]:
    """(the bytes at `uri`, their keccak256), within the read limits (or less: `max_bytes`,
    `seconds`); DataDigestMismatch past them or when the URI cannot be read."""
    parts: list[bytes] = []
    digest = _read_into(uri, parts.append, max_bytes, seconds)
    return b"".join(parts), digest


def _mismatch(uri: str, actual: bytes, expected: bytes) -> DataDigestMismatch:
    return DataDigestMismatch(f"{uri} has keccak256 0x{actual.hex()}, the spec expects "
                              f"0x{expected.hex()}; fetch the requester's file again")


def fetch_verified(uri: str, expected_digest: str | bytes, *, cached: bool = True,
                   max_bytes: int | None = None) -> Path:
    """A remote file in the content-addressed cache, streamed to disk while hashing (within
    the read limits, or `max_bytes` if less) and kept only if its keccak256 is
    `expected_digest`; returns its path. A copy already cached is used unless `cached` is
    False (a requester checking that the URI serves the file)."""
    expected = _as_digest(expected_digest)
    if cached and (kept := _cached_copy(expected, max_bytes)) is not None:
        return kept
    copy = cache_folder() / expected.hex()
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
    try:
        with open(partial, "wb") as f:
            actual = _read_into(uri, f.write, max_bytes)
        if actual != expected:
            raise _mismatch(uri, actual, expected)
        partial.replace(copy)
    finally:
        partial.unlink(missing_ok=True)
    return copy


def _cached_copy(expected: bytes, max_bytes: int | None) -> Path | None:
    """The cache's copy of the file with keccak256 `expected`, if it holds a whole, unaltered
    one within `max_bytes`."""
    copy = cache_folder() / expected.hex()
    if (copy.is_file() and (max_bytes is None or copy.stat().st_size <= max_bytes)
            and file_digest(copy) == expected):
        return copy
    return None


def _unserved_marker(model_digest: str | bytes, coin: bytes) -> Path:
    return cache_folder() / f"{_as_digest(model_digest).hex()}.unserved-{coin.hex()}"


def mark_unserved(model_digest: str | bytes, coin: bytes) -> None:
    """Record, for the job run with `coin`, that the chain says the model was not served to
    this worker (a model purchase's seller did not serve the round in time): the evaluation
    job then scores no model, as every honest worker of the round does."""
    marker = _unserved_marker(model_digest, coin)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def unserved_model(model_digest: str | bytes, coin: bytes) -> bool:
    """Whether `mark_unserved` recorded the model as not served for the run with `coin`."""
    return _unserved_marker(model_digest, coin).exists()


def keep_verified(data: bytes, expected_digest: str | bytes) -> Path:
    """Put bytes obtained another way (a sealed copy opened here) into the content-addressed
    cache, where `read_verified` of any URI with that digest finds them."""
    expected = _as_digest(expected_digest)
    if (actual := keccak_digest(data)) != expected:
        raise DataDigestMismatch(f"the bytes have keccak256 0x{actual.hex()}, "
                                 f"not 0x{expected.hex()}")
    copy = cache_folder() / expected.hex()
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
    partial.write_bytes(data)
    partial.replace(copy)
    return copy


def read_verified(uri: str, expected_digest: str | bytes, *, cached: bool = True,
                  max_bytes: int | None = None) -> bytes:
    """The file's bytes, after checking their keccak256 against `expected_digest`.

    `uri` is a local path, a `file://` URI, or any fsspec URL (https://, s3://, gs://, …).
    Remote bytes that match are kept in a content-addressed cache, where the job's child
    process then finds them; `cached=False` asks the URI itself (a requester checking that
    it serves the data). Every read stops at the read limits (`read_limits()`: a URI a
    task's publisher names must not make a worker read without end), or at `max_bytes` (a
    spec's URI) if that is less.
    """
    if is_remote(uri):
        return fetch_verified(uri, expected_digest, cached=cached,
                              max_bytes=max_bytes).read_bytes()
    expected = _as_digest(expected_digest)
    if cached and Path(uri).expanduser().is_dir():
        # A folder names sealed copies (a model purchase's, on a chain where paths are
        # allowed): the model is the one `keep_verified` opened into the cache.
        if (kept := _cached_copy(expected, max_bytes)) is not None:
            return kept.read_bytes()
    data, actual = read_limited(uri, max_bytes)
    if actual != expected:
        raise _mismatch(uri, actual, expected)
    return data


def load_dataset(uri: str, expected_digest: str | bytes) -> dict[str, np.ndarray]:
    """Verify the digest, then load the four arrays (no pickles). A remote file is streamed
    into the cache and loaded from there; a local one is read once, then hashed and parsed
    from memory (it cannot change in between)."""
    if is_remote(uri):
        source = fetch_verified(uri, expected_digest)
    else:
        source = io.BytesIO(read_verified(uri, expected_digest))
    with np.load(source, allow_pickle=False) as npz:
        missing = [name for name in ARRAYS if name not in npz.files]
        if missing:
            raise DataDigestMismatch(f"{uri} lacks arrays {', '.join(missing)}")
        return {name: npz[name] for name in ARRAYS}


def export_digits(path: str | Path) -> bytes:
    """Write scikit-learn's bundled digits as a `.npz`; returns its keccak256.

    x is float32 in [0, 1] (pixel / 16, exact in float32), y is uint8. np.savez writes stored
    (uncompressed) zip members with a fixed 1980 timestamp, so the bytes, and the digest, are the
    same on every run (tests/units/test_jobs_units.py checks it).
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
