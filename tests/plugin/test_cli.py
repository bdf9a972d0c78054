"""`ape crowdml …` through ape's root CLI, on whichever local network the suite runs on
(ethereum:local:test, or ethereum:local:foundry for anvil)."""

import re

from ape._cli import cli as ape_cli
from click.testing import CliRunner

from ape_crowdml.delivery import MAGIC, pack
from ape_crowdml.render import wei
from ape_crowdml.store import Store
from crowdml_compute.spec import load_spec
from crowdml_support import DEPOSIT, REWARD, tiny_spec_file


def task_id_from(output: str) -> int:
    return int(re.search(r"task (\d+) published", output).group(1))


def test_full_task_driven_by_the_cli(ape, state, accounts):
    spec = tiny_spec_file(state)
    assert "deployed" in ape("deploy", account=0)
    task = task_id_from(ape("publish", spec, "--reward", REWARD, "--deposit", DEPOSIT,
                            "--workers", 2, account=0))
    for worker in (1, 2):
        assert f"joined task {task}" in ape("join", task, account=worker)
    coin = re.search(r"coin (0x\w+) released", ape("release-coin", task, account=0)).group(1)
    digests = {re.search(r"result (0x\w+)", ape("work", task, account=w)).group(1)
               for w in (1, 2)}
    assert len(digests) == 1
    off_chain = CliRunner().invoke(ape_cli, ["crowdml", "run-job", str(spec), "--coin", coin])
    assert off_chain.output.splitlines()[-1] == next(iter(digests))
    for worker in (1, 2):
        assert "revealed" in ape("reveal", task, account=worker)
    assert "agreed" in ape("settle", task, account=0)
    status = ape("status", task)
    assert "agreed" in status and digests.pop() in status
    for worker in (1, 2):
        assert f"claimed {wei(DEPOSIT + REWARD // 2)} " in ape("claim", task, account=worker)
    listing = ape("list")
    assert re.search(rf"│ {task}\s+│ agreed", listing)
    fetched = ape("fetch", task, "--out", state / "model.crowdml")
    assert "verified" in fetched and "params/Dense_0/kernel: (64, 16)" in fetched


def test_requester_aborts_a_short_roster_and_everyone_is_refunded(ape, state, accounts):
    spec = tiny_spec_file(state)
    ape("deploy", account=0)
    task = task_id_from(ape("publish", spec, "--reward", REWARD, "--deposit", DEPOSIT,
                            "--workers", 2, "--chain-coin", account=0))
    ape("join", task, account=1)
    assert f"task {task} ended: aborted" in ape("abort", task, account=0)
    assert f"claimed {wei(DEPOSIT)} " in ape("claim", task, account=1)
    assert f"claimed {wei(REWARD)} " in ape("claim", task, account=0)


def test_fetch_refuses_a_tampered_artifact(ape, state, accounts):
    spec = tiny_spec_file(state)
    ape("deploy", account=0)
    task = task_id_from(ape("publish", spec, "--reward", REWARD, "--deposit", DEPOSIT,
                            "--workers", 2, "--chain-coin", account=0))
    for worker in (1, 2):
        ape("join", task, account=worker)
    for worker in (1, 2):
        ape("work", task, account=worker)
    digest = None
    for worker in (1, 2):
        digest = re.search(r"revealed (0x\w+)", ape("reveal", task, account=worker)).group(1)
    ape("settle", task, account=0)
    ape("claim", task, account=1)  # delivers first: uploads, announces
    [upload] = [path for path in (state / "state" / "artifacts").iterdir()
                if path.read_bytes().startswith(MAGIC)]
    upload.write_bytes(pack(b"not the model", None))  # a well-formed delivery of other bytes
    output = ape("fetch", task, expect=1)
    assert f"artifacts/{upload.name}: not the agreed result {digest}" in output
    assert "Traceback" not in output


def test_work_fetch_and_report_say_what_the_job_said(ape, state, accounts, monkeypatch):
    spec = tiny_spec_file(state)
    ape("deploy", account=0)
    task = task_id_from(ape("publish", spec, "--reward", REWARD, "--deposit", DEPOSIT,
                            "--workers", 2, "--chain-coin", account=0))
    refused = ape("report", task, expect=1)
    assert "workers deliver their runs' summaries once a task settled" in refused
    for worker in (1, 2):
        ape("join", task, account=worker)
    said = ape("work", task, account=1)
    assert re.search(r"epoch 1: loss \d", said) and "test_accuracy: " in said
    assert "(the worker's word: only the result digest is agreed on chain)" in said
    # Not at a terminal: the project's warm job processes (ape-config.yaml), not a fresh one.
    def cold_job(*args, **kwargs):
        raise AssertionError("a cold job process started")

    with monkeypatch.context() as patched:
        patched.setattr("crowdml_compute.runner.start_job", cold_job)
        ape("work", task, account=2)
    for worker in (1, 2):
        ape("reveal", task, account=worker)
    ape("settle", task, account=0)
    ape("claim", task, account=1)  # delivers, then claims
    fetched = ape("fetch", task, "--out", state / "model.crowdml")
    assert f"verified (read at {state / 'state' / 'artifacts'}/0x" in fetched
    assert "test_accuracy: " in fetched and "the worker's word" in fetched
    reported = ape("report", task, "--out", state / "report.png")
    assert f"task {task}: agreed, 1 run summary delivered" in reported
    assert (state / "report.png").read_bytes().startswith(b"\x89PNG")


def test_make_spec_writes_what_publish_reads(state):
    result = CliRunner().invoke(ape_cli, [
        "crowdml", "make-spec", "jobs/train_classifier.py", str(state / "data" / "digits.npz"),
        "--digits", "--hparams", '{"epochs": "1"}', "--no-canary",
        "--out", str(state / "made.json")])
    assert result.exit_code == 0, result.output
    spec = load_spec(state / "made.json")
    assert result.output.strip() == f"{state / 'made.json'}: spec 0x{spec.digest().hex()}"
    assert spec.job == "train_classifier.py" and spec.canary is None
    # As the job's Config reads them: coerced, defaults filled.
    assert spec.hparams == {"hidden": [128, 64], "dropout": 0.1, "optimizer": "adam",
                            "learning_rate": 0.001, "batch_size": 64, "epochs": 1,
                            "micro_batches": 1, "arithmetic": "exact", "exact_slices": 1}
    assert spec.profile.name == "cpu-portable"  # exact arithmetic: the portable profile


def test_make_spec_adds_the_jobs_own_canary_by_default(state):
    result = CliRunner().invoke(ape_cli, [
        "crowdml", "make-spec", "jobs/train_classifier.py", str(state / "data" / "digits.npz"),
        "--digits", "--hparams", '{"epochs": 5, "hidden": [16]}',
        "--out", str(state / "made.json")])
    assert result.exit_code == 0, result.output
    spec = load_spec(state / "made.json")
    # A few steps at the real model and batch shapes, not a smaller model.
    assert spec.canary.hparams == {"epochs": 3, "steps_per_epoch": 3}
    assert spec.canary.coin == "0x" + "00" * 32
    assert "running the canary here" in result.output  # a silent ~20 s otherwise
    # The result key: its public half in the spec, its secret half in the state folder.
    assert Store(state / "state").result_key(bytes.fromhex(spec.result_key[2:])) is not None
    clear = CliRunner().invoke(ape_cli, [
        "crowdml", "make-spec", "jobs/train_classifier.py", str(state / "data" / "digits.npz"),
        "--no-canary", "--no-seal", "--out", str(state / "clear.json")])
    assert clear.exit_code == 0, clear.output
    assert load_spec(state / "clear.json").result_key is None


def test_make_spec_with_a_canary_that_workers_reproduce(state):
    from crowdml_compute.runner import check_canary

    result = CliRunner().invoke(ape_cli, [
        "crowdml", "make-spec", "jobs/train_classifier.py", str(state / "data" / "digits.npz"),
        "--digits", "--hparams", '{"epochs": 2, "hidden": [16]}', "--canary", '{"epochs": 1}',
        "--data-uri", "https://data.example/digits.npz", "--out", str(state / "made.json")])
    assert result.exit_code == 0, result.output  # the canary ran on the local copy
    spec = load_spec(state / "made.json")
    assert spec.data_uri == "https://data.example/digits.npz"
    assert spec.canary.hparams == {"epochs": 1} and spec.canary.coin == "0x" + "00" * 32
    on_this_machine = spec.model_copy(update={"data_uri": str(state / "data" / "digits.npz")})
    assert check_canary(on_this_machine).digest.hex() == spec.canary.digest[2:]


def test_make_spec_rejects_a_malformed_canary(state):
    result = CliRunner().invoke(ape_cli, [
        "crowdml", "make-spec", "jobs/train_classifier.py", str(state / "data" / "digits.npz"),
        "--digits", "--canary", "{epochs", "--out", str(state / "made.json")])
    assert result.exit_code == 2  # a malformed value: click's usage error, in one line
    assert re.fullmatch(r"Error: Invalid value for '--canary': Invalid JSON string: Expecting "
                        r"property name enclosed in double quotes: line 1 column 2 \(char 1\)\n",
                        result.output)
    assert not (state / "made.json").exists()
    both = CliRunner().invoke(ape_cli, [
        "crowdml", "make-spec", "jobs/train_classifier.py", str(state / "data" / "digits.npz"),
        "--canary", "{}", "--no-canary", "--out", str(state / "made.json")])
    assert both.exit_code == 1
    assert re.fullmatch(r"ERROR: +--canary and --no-canary exclude each other\n", both.output)
