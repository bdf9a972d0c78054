"""Everything from the chain: the task's Published event names where its spec lives, a worker
fetches and verifies it there, then the data and (after AGREED) the result at the URIs the spec
names. Stores are fsspec URLs; here an S3-compatible server on loopback (tests/store_server.py)."""

from __future__ import annotations

import fsspec
import pytest

from ape_crowdml.board import Phase
from crowdml_compute.data import export_digits
from crowdml_compute.digest import keccak_digest
from crowdml_compute.spec import make_spec
from ape_crowdml.errors import SpecError, TaskRejected
from ape_crowdml.parties import Requester, Worker, deploy_board
from crowdml_support import DEPOSIT, REWARD, TINY_HPARAMS, isolated_config, tiny_spec_file


@pytest.fixture
def config(tmp_path):
    return isolated_config(tmp_path / "requester")


@pytest.fixture
def board(accounts, config):
    return deploy_board(accounts[0], config=config)


def stranger(board, account, tmp_path, name="stranger"):
    """A worker sharing nothing with the requester but the chain: its own state folder and
    artifact store, and no jobs folder (the shipped jobs only)."""
    config = isolated_config(tmp_path / name).model_copy(update={"jobs_folder": []})
    return Worker(board, account, config=config)


def test_a_stranger_finds_spec_data_and_result_through_an_s3_store(
        board, accounts, config, tmp_path, store_server):
    bucket = store_server.bucket("crowdml-tasks")
    local = tmp_path / "digits.npz"
    export_digits(local)
    data_uri = f"{bucket}/data/digits.npz"
    fsspec.open(data_uri, "wb").open().write(local.read_bytes())  # the requester uploads it
    spec = make_spec("train_classifier", local, TINY_HPARAMS, data_uri=data_uri,
                     store=f"{bucket}/artifacts")
    task = Requester(board, accounts[0], config=config).publish(
        spec, reward=REWARD, deposit=DEPOSIT, workers=2)
    spec_uri = board.spec_uri(task)
    assert spec_uri == f"{bucket}/artifacts/0x{spec.digest().hex()}"
    workers = [stranger(board, accounts[i], tmp_path, f"w{i}") for i in (1, 2)]
    assert workers[0].spec_of(task) == spec
    for w in workers:
        w.join(task)
    Requester(board, accounts[0], config=config).release_coin(task)
    results = {w.work(task) for w in workers}  # the job's process reads the data from S3
    for w in workers:
        w.reveal(task)
    assert workers[0].settle(task) == Phase.AGREED
    for w in workers:
        assert w.claim(task) == DEPOSIT + REWARD // 2  # delivered to the spec's S3 store first
    # A reader with no store of its own gets the result from the spec's store, verified.
    reader = stranger(board, accounts[3], tmp_path, "reader")
    assert keccak_digest(reader.fetch_bytes(task)) == results.pop()


def test_a_spec_uri_that_serves_other_bytes_is_refused(board, accounts, config, tmp_path):
    spec_file = tiny_spec_file(tmp_path)
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(spec_file.read_bytes() + b" ")
    requester = Requester(board, accounts[0], config=config)
    with pytest.raises(SpecError, match="does not serve this spec"):
        requester.publish(spec_file, reward=REWARD, deposit=DEPOSIT, workers=2,
                          spec_uri=str(wrong))
    with pytest.raises(TaskRejected, match="at most 512"):
        requester.publish(spec_file, reward=REWARD, deposit=DEPOSIT, workers=2,
                          spec_uri="https://example.org/" + "x" * 500)
    # Published by hand with a wrong URI: a worker refuses it, unless its own store has the spec.
    spec = requester.publish(spec_file, reward=REWARD, deposit=DEPOSIT, workers=2)
    digest = board.task(spec).spec
    task = board.publish(accounts[0], spec=digest, data=board.task(spec).data, workers=2,
                         deposit=DEPOSIT, reward=REWARD, join_blocks=20, commit_blocks=20,
                         reveal_blocks=20, spec_uri=str(wrong))
    with pytest.raises(SpecError, match=f"task {task}'s spec: .* the spec expects"):
        stranger(board, accounts[1], tmp_path).spec_of(task)
    shares_the_store = Worker(board, accounts[1], config=config)
    assert shares_the_store.spec_of(task).digest() == digest


def test_without_a_spec_uri_only_a_shared_store_helps(board, accounts, config, tmp_path):
    spec_file = tiny_spec_file(tmp_path)
    first = Requester(board, accounts[0], config=config).publish(
        spec_file, reward=REWARD, deposit=DEPOSIT, workers=2)
    task = board.publish(accounts[0], spec=board.task(first).spec, data=board.task(first).data,
                         workers=2, deposit=DEPOSIT, reward=REWARD, join_blocks=20,
                         commit_blocks=20, reveal_blocks=20)
    assert board.spec_uri(task) == ""
    with pytest.raises(SpecError, match="names no spec URI"):
        stranger(board, accounts[1], tmp_path).spec_of(task)
    assert Worker(board, accounts[1], config=config).spec_of(task).digest() == \
        board.task(task).spec


def test_the_board_refuses_a_spec_uri_longer_than_512_bytes(board, accounts):
    import ape

    args = (b"\x01" * 32, b"\x02" * 32, 2, DEPOSIT, 20, 20, 20, b"\x00" * 32, [])
    with ape.reverts():
        board.contract.publish(*args, "x" * 513, sender=accounts[0], value=REWARD)
    board.contract.publish(*args, "é" * 256, sender=accounts[0], value=REWARD)  # 512 bytes
    assert board.spec_uri(board.task_count()) == "é" * 256


def test_a_spec_uri_serving_without_end_is_refused_after_a_megabyte(board, accounts, config,
                                                                    tmp_path):
    """A requester naming an endless source (here /dev/zero) as its spec URI costs a worker
    one megabyte read, not its memory: the read stops past MAX_SPEC_BYTES."""
    first = Requester(board, accounts[0], config=config).publish(
        tiny_spec_file(tmp_path), reward=REWARD, deposit=DEPOSIT, workers=2)
    task = board.publish(accounts[0], spec=board.task(first).spec, data=board.task(first).data,
                         workers=2, deposit=DEPOSIT, reward=REWARD, join_blocks=20,
                         commit_blocks=20, reveal_blocks=20, spec_uri="/dev/zero")
    with pytest.raises(SpecError, match="/dev/zero holds more than 1,048,576 bytes"):
        stranger(board, accounts[1], tmp_path).spec_of(task)
