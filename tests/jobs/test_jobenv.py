"""Job environments (crowdml_compute/jobenv.py): a profile's jobs run in the interpreter of its job
stack, not the plugin's (which has no jax); a missing or wrong job environment is refused with one line before anything is spent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crowdml_compute import child, host, jobenv
from crowdml_compute.data import export_digits
from crowdml_compute.profile import PROFILES
from crowdml_compute.runner import run_job
from crowdml_compute.spec import make_spec
from ape_crowdml.errors import CrowdmlError, EnvironmentMismatch, SpecError

REPO = Path(__file__).resolve().parents[2]
PINNED_PACKAGES = PROFILES["cpu-exact"].packages
COIN = bytes.fromhex("ab" * 32)

# A job that reports the process it runs in instead of training.
WHERE_JOB = '''
import importlib.util, sys
import jax, numpy as np
from crowdml_compute.digest import encode_pytree
from crowdml_compute.spec import HParams

class Config(HParams):
    hidden: int = 3

def run(hparams, data, keys, report):
    report.metric("python", "%d.%d" % sys.version_info[:2])
    report.metric("prefix", sys.prefix)
    report.metric("jax", jax.__version__)
    report.metric("numpy", np.__version__)
    report.metric("ape_importable", importlib.util.find_spec("ape") is not None)
    report.metric("ape_loaded", sorted(m for m in sys.modules if m == "ape" or m.startswith("ape.")))
    return encode_pytree({"draw": jax.random.uniform(keys.next(), (4,))})
'''


@pytest.fixture(scope="module")
def where_job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs")
    (folder / "where.py").write_text(WHERE_JOB)
    export_digits(folder / "digits.npz")
    return folder


def run_where(folder: Path, profile: str):
    spec = make_spec(folder / "where.py", folder / "digits.npz", {}, profile=profile)
    return run_job(spec, COIN, job_folders=[folder])


def test_a_cpu_exact_job_runs_in_its_job_environment_not_the_plugins(where_job):
    result = run_where(where_job, "cpu-exact")
    python = jobenv.interpreter("jax0.11.2-py3.12")
    assert result.metrics["python"] == "3.12"  # one Python, two environments
    assert Path(result.metrics["prefix"]) == python.parent.parent != Path(sys.prefix)
    assert (result.metrics["jax"], result.metrics["numpy"]) == (PINNED_PACKAGES["jax"],
                                                                PINNED_PACKAGES["numpy"])
    assert result.metrics["ape_importable"] is False and result.metrics["ape_loaded"] == []
    assert run_where(where_job, "cpu-exact").digest == result.digest  # one spec, one digest


def test_the_plugin_reads_a_jobs_config_in_the_job_environment(where_job, monkeypatch):
    """The plugin has no jax, so it never imports a job: make_spec asks the job environment
    for the job's Config (child.job_config). Here it must: jax cannot be found."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else real_find_spec(name, *a))
    calls = []
    real_call = child.served_call
    monkeypatch.setattr(child, "served_call",
                        lambda *a, **k: calls.append(a[1]) or real_call(*a, **k))
    monkeypatch.setattr(child, "_JOB_CONFIGS", {})
    spec = make_spec(where_job / "where.py", where_job / "digits.npz", {"hidden": 3},
                     profile="cpu-exact")
    assert calls == ["job-config"] and spec.hparams == {"hidden": 3}
    # A bad value is the job's Config's own refusal, raised here as the SpecError it is.
    with pytest.raises(SpecError, match="hidden"):
        make_spec(where_job / "where.py", where_job / "digits.npz", {"hidden": "many"},
                  profile="cpu-exact")


def test_a_missing_job_environment_is_one_line_naming_the_fix(tmp_path, where_job, monkeypatch):
    monkeypatch.setattr(host, "_provider",
                        lambda: host.HostSettings(job_env_folder=tmp_path / "none"))
    with pytest.raises(EnvironmentMismatch, match="ape crowdml job-env create jax0.11.2-py3.12"):
        child.check_environment(PROFILES["cpu-exact"])
    with pytest.raises(EnvironmentMismatch, match="has no environment here"):
        run_where(where_job, "cpu-exact")
    assert list(tmp_path.iterdir()) == []  # nothing made on the way


def test_an_environment_without_the_stack_is_refused_with_the_missing_pin(tmp_path, monkeypatch):
    """An environment that lacks the stack (made with --no-install) is refused in one line
    naming the rebuild, and a failed build leaves no environment behind."""
    python = jobenv.create("jax0.11.2-py3.12", tmp_path / "bare", install=False,
                           echo=lambda line: None)
    monkeypatch.setattr(host, "_provider",
                        lambda: host.HostSettings(job_envs={"jax0.11.2-py3.12": python}))
    with pytest.raises(EnvironmentMismatch, match="interpreter failed: .*No module named.*"
                                                  "job-env create jax0.11.2-py3.12"):
        child.check_environment(PROFILES["cpu-exact"])
    with pytest.raises(CrowdmlError, match="exists; remove it first"):
        jobenv.create("jax0.11.2-py3.12", tmp_path / "bare", install=False)


def other_python(tmp_path: Path) -> str:
    """An interpreter that says it is Python 3.11."""
    fake = tmp_path / "python3.11"
    fake.write_text("#!/bin/sh\necho 3.11\n")
    fake.chmod(0o755)
    return str(fake)


def test_create_refuses_another_python_or_stack(tmp_path):
    with pytest.raises(CrowdmlError, match="needs Python 3.12, .* is 3.11"):
        jobenv.create("jax0.11.2-py3.12", tmp_path / "env", other_python(tmp_path))
    with pytest.raises(EnvironmentMismatch, match="unknown job stack 'jax9'"):
        jobenv.create("jax9", tmp_path / "env")
    with pytest.raises(EnvironmentMismatch, match="unknown job stack 'plugin'"):
        jobenv.create("plugin", tmp_path / "env")
    assert not (tmp_path / "env").exists()


def test_cli_lists_the_stacks_and_refuses_in_one_line(tmp_path):
    ape = str(Path(sys.executable).parent / "ape")
    listing = subprocess.run([ape, "crowdml", "job-env", "list"], capture_output=True,
                             text=True, cwd=REPO)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split(" ")[0]: line for line in listing.stdout.splitlines()}
    assert str(jobenv.interpreter("jax0.11.2-py3.12")) in lines["jax0.11.2-py3.12"]
    assert "cpu-exact" in lines["jax0.11.2-py3.12"]
    wrong = subprocess.run([ape, "crowdml", "job-env", "create", "--path", str(tmp_path / "e"),
                            "--python", other_python(tmp_path)], capture_output=True, text=True,
                           cwd=REPO)
    output = wrong.stdout + wrong.stderr  # ape prints its one ERROR line on stdout
    assert wrong.returncode == 1 and output.count("\n") == 1, output
    assert output.startswith("ERROR") and "needs Python 3.12" in output


def test_a_stray_module_in_the_working_folder_does_not_reach_the_job(where_job, tmp_path,
                                                                      monkeypatch):
    """A worker started in a folder holding numpy.py (or an optax/ of its own) still runs the
    stack's packages: the job's interpreter runs with -P, without the working folder."""
    for name in ("numpy", "optax", "jax"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the working folder is on the "
                                             "job's path')\n")
    monkeypatch.chdir(tmp_path)
    result = run_where(where_job, "cpu-exact")
    assert (result.metrics["jax"], result.metrics["numpy"]) == (PINNED_PACKAGES["jax"],
                                                                PINNED_PACKAGES["numpy"])


def test_a_failed_build_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(jobenv, "STACKS_FOLDER", tmp_path / "no-locks")  # pip cannot install
    with pytest.raises(CrowdmlError, match="building job stack jax0.11.2-py3.12 failed"):
        jobenv.create("jax0.11.2-py3.12", tmp_path / "env", echo=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # A build that stopped half way (no completion mark) is refused, not used.
    half = tmp_path / "envs" / "jax0.11.2-py3.12" / "bin"
    half.mkdir(parents=True)
    (half / "python").touch()
    monkeypatch.setattr(host, "_provider",
                        lambda: host.HostSettings(job_env_folder=tmp_path / "envs"))
    with pytest.raises(EnvironmentMismatch, match="is not complete .a build stopped."):
        jobenv.interpreter("jax0.11.2-py3.12")


def test_one_serving_child_answers_the_calls_and_a_dead_one_is_replaced(where_job):
    """make-spec's Config reads go to one serving child per stack (jax imported once); a child
    that died is replaced on the next call."""
    profile = PROFILES["cpu-exact"]
    first = child.served_call(profile, "job-config", {"job": str(where_job / "where.py"),
                                                      "hparams": {"hidden": 5}})
    server = child._SERVERS[profile.stack][0]
    again = child.served_call(profile, "job-config", {"job": str(where_job / "where.py"),
                                                      "hparams": {"hidden": "6"}})
    assert child._SERVERS[profile.stack][0] is server  # the same child answered
    assert (first["hparams"], again["hparams"]) == ({"hidden": 5}, {"hidden": 6})
    server.kill()
    server.wait()
    answer = child.served_call(profile, "job-config", {"job": str(where_job / "where.py"),
                                                       "hparams": {}})
    assert answer["hparams"] == {"hidden": 3} and child._SERVERS[profile.stack][0] is not server


def test_what_a_job_file_prints_or_raises_is_no_answer(tmp_path):
    """A job file printing while it is read cannot shift the serving child's answers, and one
    that fails to import is a SpecError naming it, not a broken environment."""
    profile = PROFILES["cpu-exact"]
    talker = tmp_path / "talker.py"
    talker.write_text(WHERE_JOB + "\nprint('hello from the job file')\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import jax\nraise NameError('no such thing')\n")
    for _ in range(2):
        answer = child.served_call(profile, "job-config", {"job": str(talker),
                                                           "hparams": {"hidden": 4}})
        assert answer["hparams"] == {"hidden": 4}
    with pytest.raises(SpecError, match="broken.py failed: NameError: no such thing"):
        child.served_call(profile, "job-config", {"job": str(broken), "hparams": {}})
    with pytest.raises(SpecError, match="broken.py failed: NameError"):
        child.call(profile, "job-config", {"job": str(broken), "hparams": {}})
