"""Jobs by digest: a worker runs the job whose source has the spec's keccak256, found among the
jobs shipped in the package and its configured folders, from any working directory, and after
installing the package alone (the wheel, in an empty folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from job_support import job_process
from ape_crowdml.board import NEUTRAL_SINK
from crowdml_compute.data import export_digits
from crowdml_compute.digest import file_digest
from crowdml_compute.jobs import JobRegistry, resolve_job, shipped_folder
from crowdml_compute.spec import make_spec, save_spec
from ape_crowdml.config import CrowdmlConfig, WorkerPolicy
from ape_crowdml.errors import PolicyRefused, SpecError
from ape_crowdml.policy import allowed_job_digests, check_policy
from crowdml_support import TINY_HPARAMS

REPO = Path(__file__).resolve().parents[2]
COIN = "0x" + "5eed" * 16
TASK = SimpleNamespace(task_id=1, deposit=10, reward=10, workers=2, join_blocks=10,
                       commit_blocks=10, reveal_blocks=10)  # what the policy reads


def digest_of(path: Path) -> str:
    return "0x" + file_digest(path).hex()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    export_digits(path)
    return path


@pytest.fixture
def own_job(tmp_path) -> Path:
    """A job of the worker's own: the shipped training job with one more line."""
    folder = tmp_path / "my-jobs"
    folder.mkdir()
    job = folder / "my_train.py"
    job.write_text((REPO / "jobs" / "train_classifier.py").read_text() + "\n# mine\n")
    return job


def test_the_shipped_jobs_are_found_by_digest_and_by_name():
    registry = JobRegistry()
    train = shipped_folder() / "train_classifier.py"
    assert registry.find(digest_of(train)) == train
    assert registry.find(digest_of(train).upper().replace("0X", "0x")) == train
    assert registry.named("train_classifier") == registry.named("train_classifier.py") == train
    assert {p.name for p in registry.by_digest.values()} == {  # __init__.py is no job
        p.name for p in shipped_folder().glob("*.py") if not p.name.startswith("_")}
    assert {"train_classifier.py", "evaluate_classifier.py", "train_conv.py"} <= {
        p.name for p in registry.by_digest.values()}
    with pytest.raises(SpecError, match="no job file with keccak256 0x1111.* \\(x.py\\)"):
        registry.find("0x" + "11" * 32, "x.py")
    with pytest.raises(SpecError, match="no job named nope") as typo:
        registry.named("nope")
    # a typo is answered with the valid names, and each folder once
    assert "the jobs are evaluate_classifier, train_classifier, train_conv" in str(typo.value)
    doubled = JobRegistry([shipped_folder()])
    with pytest.raises(SpecError) as twice:
        doubled.named("nope")
    assert str(twice.value).count(str(shipped_folder().resolve())) == 1


def test_configured_folders_add_jobs_and_missing_ones_are_skipped(own_job, tmp_path):
    registry = JobRegistry([own_job.parent, tmp_path / "absent"])
    assert registry.find(digest_of(own_job)) == own_job
    shipped = len(JobRegistry().by_digest)
    assert len(registry.by_digest) == shipped + 1
    # The shipped folder configured again adds nothing twice.
    assert len(JobRegistry([shipped_folder()]).by_digest) == shipped


def test_a_requester_names_a_job_by_path_or_by_name(own_job, tmp_path):
    assert resolve_job("train_classifier") == shipped_folder() / "train_classifier.py"
    assert resolve_job(own_job) == own_job
    assert resolve_job("my_train", [own_job.parent]) == own_job
    for missing in ("jobs/nope.py", tmp_path / "nope.py", "model.txt"):
        with pytest.raises(SpecError, match="does not exist"):
            resolve_job(missing)


def test_config_takes_one_jobs_folder_or_a_list():
    assert CrowdmlConfig(jobs_folder="mine").jobs_folder == [Path("mine")]
    assert CrowdmlConfig(jobs_folder=["a", "b"]).jobs_folder == [Path("a"), Path("b")]
    assert CrowdmlConfig().jobs_folder == [Path("jobs")]


def test_the_allowlist_takes_names_or_digests_and_defaults_to_every_known_job(
        digits, own_job):
    registry = JobRegistry([own_job.parent])
    mine = make_spec(own_job, digits, TINY_HPARAMS)
    shipped = make_spec("train_classifier", digits, TINY_HPARAMS)
    assert mine.job == "my_train.py" and shipped.job == "train_classifier.py"
    for spec in (mine, shipped):
        check_policy(TASK, spec, WorkerPolicy(), registry, NEUTRAL_SINK)
    by_name = WorkerPolicy(accept_jobs=["train_classifier"])
    by_digest = WorkerPolicy(accept_jobs=[mine.job_digest.upper().replace("0X", "0x")])
    check_policy(TASK, shipped, by_name, registry, NEUTRAL_SINK)
    check_policy(TASK, mine, by_digest, registry, NEUTRAL_SINK)
    with pytest.raises(PolicyRefused, match="not on this worker's allowlist"):
        check_policy(TASK, mine, by_name, registry, NEUTRAL_SINK)
    with pytest.raises(PolicyRefused, match="allowlisted job: no job named nope"):
        allowed_job_digests(WorkerPolicy(accept_jobs=["nope"]), registry)
    # Allowlisted by digest, but this worker has no such file: refused before any deposit.
    with pytest.raises(PolicyRefused, match="no job file with keccak256"):
        check_policy(TASK, mine, by_digest, JobRegistry(), NEUTRAL_SINK)


def runner(spec: Path, cwd: Path, *extra: str, env: dict | None = None):
    """The runner's command line in cpu-exact's job environment; a PYTHONPATH in `env` (the
    wheel's packages) replaces this checkout's staged ones."""
    command, environment = job_process(env=env)
    if env is not None and "PYTHONPATH" in env:
        environment["PYTHONPATH"] = env["PYTHONPATH"]
    return subprocess.run(
        [*command, "--spec", str(spec), "--coin", COIN, "--no-progress", *extra],
        capture_output=True, text=True, cwd=cwd, env=environment)


def test_the_runner_works_from_any_folder(digits, own_job, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shipped = runner(save_spec(make_spec("train_classifier", digits, TINY_HPARAMS),
                               tmp_path / "shipped.json"), elsewhere)
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout.startswith("0x") and len(shipped.stdout.strip()) == 66
    mine = save_spec(make_spec(own_job, digits, TINY_HPARAMS), tmp_path / "mine.json")
    refused = runner(mine, elsewhere)
    assert refused.returncode == 2 and "no job file with keccak256" in refused.stderr
    found = runner(mine, elsewhere, "--jobs-folder", str(own_job.parent))
    assert found.returncode == 0, found.stderr
    assert found.stdout == shipped.stdout  # a comment changes the source, not the result


def test_after_installing_the_wheel_alone_a_stranger_runs_a_shipped_job(
        installed_wheel, digits, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    make = subprocess.run(
        [sys.executable, "-c",
         "import sys, ape_crowdml, crowdml_jobs\n"
         "from crowdml_compute.spec import make_spec, save_spec\n"
         "print(ape_crowdml.__file__, crowdml_jobs.__file__)\n"
         f"save_spec(make_spec('train_classifier', {str(digits)!r}, {TINY_HPARAMS!r}), "
         "'spec.json')"], capture_output=True, text=True, cwd=empty, env=env)
    assert make.returncode == 0, make.stderr
    assert all(p.startswith(str(installed_wheel)) for p in make.stdout.split())
    assert sorted(os.listdir(empty)) == ["spec.json"]  # no jobs/, no config
    run = runner(empty / "spec.json", empty, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("0x") and len(run.stdout.strip()) == 66
