"""Data named by a remote URI: fetched through fsspec, checked against the spec's digest,
and kept in a content-addressed cache (here over HTTP on loopback)."""

import functools
import http.server
import shutil
import threading

import pytest

from crowdml_compute.data import cache_folder, export_digits, read_verified
from ape_crowdml.errors import DataDigestMismatch
from crowdml_compute.runner import run_job
from crowdml_compute.spec import make_spec

TINY = {"hidden": [16], "epochs": 1, "batch_size": 128}
COIN = bytes(range(32))


@pytest.fixture
def served(tmp_path, project):
    """A folder served over HTTP on 127.0.0.1, the data cache in a fresh folder (the config
    field; the job's child process is handed it); yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with project.temp_config(crowdml={"cache_folder": str(tmp_path / "cache")}):
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_data_gives_the_local_result_and_is_cached(tmp_path, served):
    folder, url = served
    local = tmp_path / "digits.npz"
    digest = export_digits(local)
    shutil.copy(local, folder / "digits.npz")
    local_spec = make_spec("jobs/train_classifier.py", local, TINY)
    remote_spec = make_spec("jobs/train_classifier.py", local, TINY, data_uri=f"{url}/digits.npz")
    assert remote_spec.data_uri.startswith("http://") and remote_spec.data_digest == local_spec.data_digest

    assert run_job(remote_spec, COIN).digest == run_job(local_spec, COIN).digest
    assert (cache_folder() / digest.hex()).read_bytes() == local.read_bytes()
    (folder / "digits.npz").unlink()  # once cached, the server is no longer needed ...
    assert read_verified(remote_spec.data_uri, digest) == local.read_bytes()
    with pytest.raises(DataDigestMismatch, match="cannot fetch"):  # ... unless asked directly
        read_verified(remote_spec.data_uri, digest, cached=False)


def test_a_corrupted_cache_copy_is_fetched_again(tmp_path, served):
    folder, url = served
    digest = export_digits(folder / "digits.npz")
    original = (folder / "digits.npz").read_bytes()
    read_verified(f"{url}/digits.npz", digest)
    (cache_folder() / digest.hex()).write_bytes(b"rotten")
    assert read_verified(f"{url}/digits.npz", digest) == original
    assert (cache_folder() / digest.hex()).read_bytes() == original


def test_tampered_remote_data_is_refused_and_not_cached(tmp_path, served):
    folder, url = served
    digest = export_digits(tmp_path / "digits.npz")
    tampered = bytearray((tmp_path / "digits.npz").read_bytes())
    tampered[-100] ^= 1
    (folder / "digits.npz").write_bytes(bytes(tampered))
    with pytest.raises(DataDigestMismatch, match="the spec expects"):
        read_verified(f"{url}/digits.npz", digest)
    assert not (cache_folder() / digest.hex()).exists()


def test_unreachable_data_is_one_clear_error(served):
    _, url = served
    with pytest.raises(DataDigestMismatch, match=r"cannot fetch http://127\.0\.0\.1:\d+/missing\.npz"):
        read_verified(f"{url}/missing.npz", b"\x00" * 32)
