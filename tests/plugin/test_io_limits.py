"""Every read of a URI a remote party names stops at a byte cap and a deadline (the worker's
`max_data_bytes` and `fetch_seconds`), with one line: a task's data served from /dev/zero or
by a server that trickles bytes forever cannot fill the worker's memory or hold it."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest

from crowdml_compute import data
from crowdml_compute.data import (MAX_BYTES_VARIABLE, SECONDS_VARIABLE, export_digits,
                                      fetch_verified, limit_variables, load_dataset,
                                      read_verified)
from crowdml_compute.digest import file_digest
from crowdml_compute.runner import run_job
from crowdml_compute.spec import make_spec
from ape_crowdml.errors import DataDigestMismatch

REPO = Path(__file__).resolve().parents[2]
CAP, SECONDS = 1 << 20, 2.0


@pytest.fixture
def limits(monkeypatch, tmp_path):
    monkeypatch.setenv(MAX_BYTES_VARIABLE, str(CAP))
    monkeypatch.setenv(SECONDS_VARIABLE, str(SECONDS))
    monkeypatch.setenv(data.CACHE_FOLDER_VARIABLE, str(tmp_path / "cache"))


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(body: bytes, trickle: bool):
    """A loopback HTTP server for `body`; with `trickle`, one byte every 0.2 s, forever."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40 if trickle else len(body)))
            self.end_headers()

        def do_GET(self):
            self.do_HEAD()
            if not trickle:
                self.wfile.write(body)
                return
            try:
                while True:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/data.npz"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    export_digits(path)
    return path


def test_a_file_past_the_cap_is_refused_in_one_line_without_reading_the_rest(limits):
    started = time.monotonic()
    with pytest.raises(DataDigestMismatch, match="holds more than 1,048,576 bytes") as refused:
        read_verified("/dev/zero", b"\x00" * 32)
    assert "\n" not in str(refused.value) and time.monotonic() - started < SECONDS


def test_a_server_that_trickles_forever_is_refused_at_the_deadline(limits):
    server, url = serve(b"", trickle=True)
    try:
        for read in (lambda: read_verified(url, b"\x00" * 32),
                     lambda: fetch_verified(url, b"\x00" * 32),
                     lambda: load_dataset(url, b"\x00" * 32)):
            started = time.monotonic()
            with pytest.raises(DataDigestMismatch, match="was not read within 2 s"):
                read()
            assert time.monotonic() - started < SECONDS + 1.5
    finally:
        server.shutdown()
    assert not list((Path(data.cache_folder())).glob("*.part"))  # nothing half-written kept


def test_control_the_same_server_serving_at_once_is_read(limits, digits):
    """The tests above can fail: what cuts the reads is the cap and the deadline."""
    body = digits.read_bytes()
    assert len(body) < CAP
    server, url = serve(body, trickle=False)
    try:
        loaded = load_dataset(url, file_digest(digits))
        assert loaded["x_train"].shape[0] > 0
        assert fetch_verified(url, file_digest(digits)).read_bytes() == body
    finally:
        server.shutdown()


def test_a_job_process_is_handed_the_limits(limits, digits, tmp_path):
    """The evaluation job reads its model URI itself, in the job's process: /dev/zero stops at
    the worker's cap there too."""
    assert limit_variables() == {MAX_BYTES_VARIABLE: str(CAP), SECONDS_VARIABLE: "2.0"}
    spec = make_spec(REPO / "jobs" / "evaluate_classifier.py", digits,
                     {"model_uri": "/dev/zero", "model_digest": "0x" + "00" * 32,
                      "subset_size": 10})
    with pytest.raises(DataDigestMismatch, match="holds more than 1,048,576 bytes"):
        run_job(spec, b"\x01" * 32)


def test_co_workers_trickling_announcements_hold_a_worker_for_one_budget_in_all(monkeypatch):
    """A hostile co-worker announces URIs that trickle forever: checking whether any of them
    already serves this worker's upload stops after VERIFY_SECONDS in all, not per URI, so the
    agent's loop is held once, briefly, however many it announces."""
    from ape_crowdml import delivery

    monkeypatch.setattr(delivery, "VERIFY_SECONDS", 1.0)
    servers = [serve(b"", trickle=True) for _ in range(4)]
    announcements = [(f"0x{i:040x}", url.replace("data.npz", f"{i}.box"))
                     for i, (_, url) in enumerate(servers)]
    started = time.monotonic()
    assert delivery.already_delivered(announcements, b"y" * 1000, local_ok=False) is None
    assert time.monotonic() - started < 1.8  # one budget, not four
    for server, _ in servers:
        server.shutdown()
    # The control: a URI that serves the very bytes is found.
    server, url = serve(b"y" * 1000, trickle=False)
    assert delivery.already_delivered([("0x1", url)], b"y" * 1000, local_ok=False) == url
    server.shutdown()
