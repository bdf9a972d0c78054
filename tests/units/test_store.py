"""The local store keeps secrets across processes, keyed by chain, board, task and account;
the artifact store refuses bytes that do not match their digest."""

import subprocess
import sys

import pytest

from ape_crowdml.artifacts import ArtifactStore
from crowdml_compute.digest import keccak_digest
from ape_crowdml.errors import ArtifactMissing
from ape_crowdml.store import CoinOpening, Store, StoredResult

BOARD = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALICE, BOB = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def stored(n: int) -> StoredResult:
    return StoredResult(bytes([n]) * 32, bytes([n + 1]) * 32, bytes([n + 2]) * 32,
                        bytes([n + 3]) * 32, b"artifact %d" % n, "/tmp/artifacts")


def test_a_result_written_here_is_read_by_another_process(tmp_path):
    Store(tmp_path).save_result(1337, BOARD, 4, ALICE, stored(1))
    script = ("import sys; from ape_crowdml.store import Store; "
              f"r = Store(sys.argv[1]).result(1337, '{BOARD}', 4, '{ALICE}'); print(r.salt.hex())")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == stored(1).salt.hex()


def test_results_are_keyed_by_chain_board_task_and_account(tmp_path):
    store = Store(tmp_path)
    store.save_result(1337, BOARD, 4, ALICE, stored(1))
    store.save_result(1337, BOARD, 4, BOB, stored(2))
    assert store.result(1337, BOARD, 4, ALICE) == stored(1)
    assert store.result(1337, BOARD, 4, BOB) == stored(2)
    for other in [(31337, BOARD, 4, ALICE), (1337, BOB, 4, ALICE), (1337, BOARD, 5, ALICE)]:
        assert store.result(*other) is None


def test_coin_openings_and_boards(tmp_path):
    store = Store(tmp_path)
    opening = CoinOpening(b"\x01" * 32, b"\x02" * 32)
    store.save_coin(1337, BOARD, b"\x03" * 32, ALICE, opening)
    assert store.coin(1337, BOARD, b"\x03" * 32, ALICE) == opening
    assert store.coin(1337, BOARD, b"\x04" * 32, ALICE) is None
    store.add_board(1337, BOARD, 1)
    store.add_board(1337, BOB, 7)
    assert store.boards(1337) == [(BOB, 7), (BOARD, 1)]


def test_artifact_store_round_trip_and_tamper(tmp_path):
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    digest = artifacts.put(b"model bytes")
    assert digest == keccak_digest(b"model bytes")
    assert artifacts.get(digest) == b"model bytes"
    (tmp_path / "artifacts" / f"0x{digest.hex()}").write_bytes(b"other bytes")
    with pytest.raises(ArtifactMissing, match="does not match its digest"):
        artifacts.get(digest)
    with pytest.raises(ArtifactMissing, match="has no artifact"):
        artifacts.get(b"\x00" * 32)


def test_artifact_store_takes_fsspec_urls():
    artifacts = ArtifactStore("memory://crowdml-test")
    assert artifacts.get(artifacts.put(b"in memory")) == b"in memory"


def test_a_secret_is_handed_only_to_the_account_that_stored_it(tmp_path):
    store = Store(tmp_path)
    opening = CoinOpening(b"\x01" * 32, b"\x02" * 32)
    store.save_coin(1337, BOARD, b"\x03" * 32, ALICE, opening)
    store.save_result(1337, BOARD, 4, ALICE, stored(1))
    assert store.coin(1337, BOARD, b"\x03" * 32, BOB) is None
    assert store.result(1337, BOARD, 4, BOB) is None
    assert store.coin(1337, BOARD, b"\x03" * 32, ALICE) == opening


def test_reading_creates_no_folder(tmp_path):
    store = Store(tmp_path / "state")
    assert store.boards(1337) == [] and store.result(1337, BOARD, 4, ALICE) is None
    assert store.coin(1337, BOARD, b"\x03" * 32, ALICE) is None
    assert not (tmp_path / "state").exists()
    store.add_board(1337, BOARD, 1)
    assert store.path.exists() and store.boards(1337) == [(BOARD, 1)]
