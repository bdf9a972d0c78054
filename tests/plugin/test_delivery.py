"""Delivery between strangers (ape_crowdml/delivery.py): the requester gets the agreed result
with no credentials shared, and only the requester can read it.

Each party has its own folder and, here, its own bucket on its own real S3 server (`rclone serve
s3`, SigV4 with the party's own key pair), read by everyone else over plain HTTP. Local paths
are refused throughout (`allow_local_uris: false`), as on any chain but ape's test chain.
"""

from pathlib import Path

import fsspec
import pytest
from nacl.public import PrivateKey, SealedBox

from ape_crowdml.board import Phase
from crowdml_compute.data import export_digits
from crowdml_compute.digest import decode_result, keccak_digest
from crowdml_compute.spec import make_spec
from ape_crowdml.delivery import (Delivery, as_upload, first_divergence, new_result_key, pack,
                                  seal, unpack, unseal)
from ape_crowdml.errors import ArtifactMissing, MissingSecret, SpecError, TaskRejected
from ape_crowdml.parties import Party, Requester, Worker, deploy_board
from ape_crowdml.store import Store
from crowdml_support import DEPOSIT, REWARD, TINY_HPARAMS, isolated_config, sealed_spec
from store_server import public_bucket


def test_a_sealed_result_opens_only_with_the_requesters_key():
    public, secret = new_result_key()
    artifact = b"the model's canonical bytes" * 50
    sealed = seal(artifact, public)
    assert artifact not in sealed and len(sealed) == len(artifact) + 48
    assert unseal(sealed, secret, "here") == artifact
    assert SealedBox(PrivateKey(secret)).decrypt(sealed) == artifact  # libsodium's own format
    # Deterministic: every honest worker uploads the same bytes...
    assert seal(artifact, public) == sealed
    # ...which differ for another result or another requester.
    assert seal(artifact + b"!", public) != sealed
    other_public, other_secret = new_result_key()
    assert seal(artifact, other_public) != sealed
    with pytest.raises(ArtifactMissing, match="does not open with this requester's result key"):
        unseal(sealed, other_secret, "the URI")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ArtifactMissing, match="altered"):
        unseal(tampered, secret, "the URI")
    summary = {"digest": "0x00", "epochs": [{"loss": 0.5}], "metrics": {"test_accuracy": 0.9}}
    clear = as_upload(artifact, summary, None)  # no result key: in the clear
    assert unpack(clear, "here") == Delivery(artifact, summary, "here")
    assert unpack(as_upload(artifact, None, None), "x").summary is None
    assert unpack(unseal(as_upload(artifact, summary, "0x" + public.hex()), secret, "x"),
                  "x").artifact == artifact
    with pytest.raises(ArtifactMissing, match="does not hold a crowdml delivery"):
        unpack(artifact, "the URI")


def strict(folder: Path, **worker):
    """A party's own config: its own state folder, no local paths accepted."""
    config = isolated_config(folder)
    return config.model_copy(update={
        "allow_local_uris": False, "worker": config.worker.model_copy(update=worker)})


@pytest.fixture
def buckets(tmp_path):
    """Three parties' own buckets: the requester's (spec and data), and two workers'."""
    with public_bucket(tmp_path / "s3-requester") as requester, \
            public_bucket(tmp_path / "s3-alice") as alice, \
            public_bucket(tmp_path / "s3-bob") as bob:
        yield requester, alice, bob


def test_strangers_deliver_the_result_sealed_through_their_own_buckets(
        accounts, tmp_path, buckets):
    own, alice_bucket, bob_bucket = buckets
    requester_config = strict(tmp_path / "requester")
    board = deploy_board(accounts[0], config=requester_config)
    # The requester makes its result key and puts its data and spec in its own bucket.
    spec, key, spec_uri = sealed_spec(own, tmp_path / "requester", requester_config.state_folder)
    requester = Requester(board, accounts[0], config=requester_config)
    task = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                             spec_uri=spec_uri, requester_coin=False)

    alice = Worker(board, accounts[1], config=strict(tmp_path / "alice",
                                                     **alice_bucket.worker_settings()))
    bob = Worker(board, accounts[2], config=strict(tmp_path / "bob",
                                                   **bob_bucket.worker_settings()))
    for worker in (alice, bob):
        worker.join(task)  # the spec and data read over HTTP: no local path, no credentials
    result = {worker.work(task) for worker in (alice, bob)}.pop()
    with pytest.raises(Exception, match="not agreed"):  # the board's own rule, before AGREED
        board.contract.announce(task, "https://example.org/x", sender=accounts[1])
    for worker in (alice, bob):
        worker.reveal(task)
    assert requester.settle(task) == Phase.AGREED
    with pytest.raises(ArtifactMissing, match="no worker has announced the result yet"):
        requester.fetch_bytes(task)
    for who, uri, reason in ((accounts[3], "https://x", "not a revealed worker"),
                             (accounts[1], "", "empty uri")):
        with pytest.raises(Exception, match=reason):
            board.contract.announce(task, uri, sender=who)

    # A co-worker announces junk first: it costs the honest delivery nothing.
    bob_s3 = fsspec.filesystem("s3", **bob_bucket.options)
    bob_s3.pipe_file("results/junk", b"not the model")
    board.announce(bob.account, task, f"{bob_bucket.public_url}/junk")
    # One party's key pair does not write into another's bucket.
    with pytest.raises(PermissionError):
        fsspec.filesystem("s3", **{**bob_bucket.options,
                                   "client_kwargs": alice_bucket.options["client_kwargs"]}
                          ).pipe_file("results/forged", b"x")

    assert alice.claim(task) == DEPOSIT + REWARD // 2  # delivers first
    (junk_uri, _), (alice_uri, announcer) = [(uri, worker) for worker, uri in
                                             board.announcements(task)]
    assert announcer == accounts[1].address and alice_uri.startswith(alice_bucket.public_url)
    uploaded = fsspec.open(alice_uri, "rb").open().read()  # what anyone reads there
    delivery = requester.fetch_delivery(task)
    artifact, summary = delivery.artifact, delivery.summary
    assert keccak_digest(artifact) == result and artifact not in uploaded
    assert uploaded == seal(pack(artifact, summary), key) and delivery.uri == alice_uri
    params = decode_result(artifact)["params"]
    assert params["Dense_0"]["kernel"].shape == (64, 16)
    # With the model, what Alice's job said of its run: her word, sealed like the result.
    assert summary == alice.summary(task) and summary["digest"] == "0x" + result.hex()
    assert len(summary["transcript"]) == len(summary["epochs"]) == TINY_HPARAMS["epochs"]
    assert summary["transcript"][-1] == summary["digest"]
    assert summary["epochs"][0]["loss"] > 0 and 0 <= summary["metrics"]["test_accuracy"] <= 1

    # Anyone else, in a folder without the key, gets one line, not the model.
    with pytest.raises(MissingSecret, match="whose secret half is not in"):
        Party(board, None, config=strict(tmp_path / "reader")).fetch_bytes(task)

    # Bob finds Alice's upload is the bytes he would upload: no second upload or announcement.
    assert bob.claim(task) == DEPOSIT + REWARD // 2
    assert len(board.announcements(task)) == 2
    assert sorted(p.name for p in bob_bucket.folder.iterdir()) == ["junk"]
    # A claimed worker is no longer on the roster: the board takes no announcement from it.
    with pytest.raises(TaskRejected, match="not claimed yet can announce"):
        board.announce(alice.account, task, alice_uri)


def test_only_urls_reach_the_chain_off_the_test_chain(accounts, tmp_path):
    config = strict(tmp_path / "requester")
    default = isolated_config(tmp_path).model_copy(update={"allow_local_uris": None})
    assert default.local_uris_allowed()  # ape's test chain: one process, one machine
    assert not config.local_uris_allowed()
    board = deploy_board(accounts[0], config=config)
    local = tmp_path / "digits.npz"
    export_digits(local)
    spec = make_spec("train_classifier", local, TINY_HPARAMS)
    requester = Requester(board, accounts[0], config=config)
    terms = {"reward": REWARD, "deposit": DEPOSIT, "workers": 2}
    with pytest.raises(TaskRejected, match=f"the spec's data URI {local} is a path on one "
                                           "machine"):
        requester.publish(spec, **terms)
    served = spec.model_copy(update={"data_uri": "https://data.example.org/digits.npz"})
    with pytest.raises(TaskRejected, match="the spec URI .* is a path on one machine.*--spec-uri"):
        requester.publish(served, **terms)
    foreign_key = served.model_copy(update={"result_key": "0x" + new_result_key()[0].hex()})
    with pytest.raises(SpecError, match="was not made in"):
        requester.publish(foreign_key, spec_uri="https://specs.example.org/spec.json", **terms)

    # A worker, for its part, accepts no path from the chain and needs a store others read.
    loose = isolated_config(tmp_path / "loose")
    task = Requester(board, accounts[0], config=loose).publish(spec, **terms)
    assert task == 1  # the refused publishes sent nothing
    with pytest.raises(TaskRejected, match=f"task {task}'s spec URI .* is a path on one machine"):
        Worker(board, accounts[1], config=strict(tmp_path / "w1")).join(task)
    with pytest.raises(TaskRejected, match=f"task {task}'s data URI {local} is a path"):
        Worker(board, accounts[1], config=strict(tmp_path / "w1")).join(task, spec)
    no_store = strict(tmp_path / "w3", result_store=None)
    with pytest.raises(TaskRejected, match="this worker's result store .* worker: result_store"):
        Worker(board, accounts[1], config=no_store).result_store()
    assert board.task(task).joined == 0


def test_first_divergence():
    assert first_divergence([["a", "b", "c"], ["a", "b", "c"]]) is None
    assert first_divergence([["a", "b", "c"], ["a", "x", "y"]]) == 2
    assert first_divergence([["a"], ["a", "b"]]) == 2  # one run stopped early
    assert first_divergence([["x"], ["a"], ["a"]]) == 1


def test_a_disagreed_tasks_report_shows_where_the_runs_parted(accounts, tmp_path):
    """Of a DISAGREED task, each worker delivers its run's summary only (sealed; never its
    result), and the report draws the losses and marks the first epoch whose transcripts
    differ."""
    from ape_crowdml.report import draw, run_report

    config = isolated_config(tmp_path / "requester")
    board = deploy_board(accounts[0], config=config)
    local = tmp_path / "digits.npz"
    export_digits(local)
    key = Store(config.state_folder).new_result_key()
    spec = make_spec("train_classifier", local, {**TINY_HPARAMS, "epochs": 3},
                     result_key="0x" + key.hex())
    requester = Requester(board, accounts[0], config=config)
    task = requester.publish(spec, reward=REWARD, deposit=DEPOSIT, workers=2,
                             requester_coin=False)
    alice, bob = (Worker(board, accounts[i], config=isolated_config(tmp_path / name))
                  for i, name in ((1, "alice"), (2, "bob")))
    for worker in (alice, bob):
        worker.join(task)
    alice.work(task)
    # Bob's machine parts from Alice's at epoch 2 (as a float sum that rounds otherwise would).
    parted = alice.summary(task)
    parted = {**parted, "transcript": parted["transcript"][:1] + ["0x" + "ab" * 32] * 2,
              "epochs": [parted["epochs"][0], {"loss": 9.0}, {"loss": 8.0}]}
    work = bob.start_work(task)
    work.cancel()
    bob._store_then_commit(work.task, work.coin, keccak_digest(b"bob's model"), b"bob's model",
                           work.store_url, parted)
    for worker in (alice, bob):
        worker.reveal(task)
    assert requester.settle(task) == Phase.DISAGREED
    for worker in (alice, bob):
        assert worker.claim(task) == DEPOSIT // 2  # delivers its summary first
    assert len(board.announcements(task)) == 2
    with pytest.raises(TaskRejected, match="ended disagreed"):
        requester.fetch_bytes(task)  # no result ever leaves a worker of a disagreed task

    report = run_report(requester, task)
    assert report.phase == Phase.DISAGREED and report.divergence == 2
    assert {d.artifact for d in report.runs.values()} == {b""}
    assert report.runs[accounts[2].address].summary == parted
    lines = "\n".join(report.lines())
    assert "the transcripts diverge at epoch 2" in lines and "the worker's word" in lines
    drawn = draw(report, tmp_path / "report.png")
    assert drawn.read_bytes().startswith(b"\x89PNG") and drawn.stat().st_size > 10_000
    with pytest.raises(MissingSecret):  # sealed: nobody else reads the transcripts
        run_report(Party(board, None, config=isolated_config(tmp_path / "reader")), task)


def test_a_model_uri_that_is_a_path_here_is_refused_before_any_read(accounts, tmp_path):
    """An evaluation's model URI is the seller's word: a worker reads no path of its own
    machine for it (`/etc/…`, the worker's keys), and says so before the deposit."""
    with public_bucket(tmp_path / "s3-requester") as own:
        local = tmp_path / "digits.npz"
        export_digits(local)
        spec = make_spec("evaluate_classifier", local,
                         {"model_digest": "0x" + "00" * 32, "model_uri": "/etc/passwd",
                          "subset_size": 10}, data_uri=own.serve("digits.npz", local.read_bytes()))
        loose = isolated_config(tmp_path / "requester")
        board = deploy_board(accounts[0], config=loose)
        task = Requester(board, accounts[0], config=loose).publish(
            spec, reward=REWARD, deposit=DEPOSIT, workers=2)
        worker = Worker(board, accounts[1], config=strict(tmp_path / "worker",
                                                          result_store="https://r.example"))
        with pytest.raises(TaskRejected, match=f"task {task}'s model URI /etc/passwd is a path "
                                               "on one machine"):
            worker.join(task, spec)
        assert board.task(task).joined == 0
