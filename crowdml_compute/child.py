"""The compute side's child processes, started one way and read back one way.

Every process the plugin starts in a job environment goes through `start`: the interpreter of the
profile's job stack (jobenv.py) with crowdml's two packages staged on its path, the profile's
sealed environment (`profile.environment_for`), the cache folder and read limits handed over
(the child reads no config). Three kinds: a job (`runner.start_job`), a warm job process
(warm.py), and a short call (`call`: `python -m crowdml_compute.child`, a JSON request line on
stdin, one JSON line back; `served_call` keeps one child per stack answering such lines) for
what needs a job's code or the job stack but no training:
checking the environment before a deposit, and reading a job's `Config` (normalising a spec's
hyperparameters, choosing its canary). The plugin itself has no jax, so it never imports a job.

A child's error travels as one record, {"type": the CrowdmlError subclass's name, "message"},
and is raised again in the parent as that class (`raise_recorded`).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import NoReturn

from . import errors
from .errors import CrowdmlError, EnvironmentMismatch, SpecError, first_line
from .jobenv import CROWDML_PACKAGES, interpreter


def error_record(exc: CrowdmlError) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)}


def raise_recorded(record: dict) -> NoReturn:
    """Raise a child's error record as its own class (CrowdmlError for one not known here)."""
    kind = getattr(errors, str(record.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, CrowdmlError)):
        kind = CrowdmlError
    raise kind(record.get("message", "the child process failed"))


def stage(folder: Path) -> Path:
    """A folder holding links to crowdml's packages (and nothing else), for PYTHONPATH."""
    from .jobs import shipped_folder

    folder.mkdir(parents=True, exist_ok=True)
    targets = {"crowdml_compute": Path(__file__).resolve().parent,
               "crowdml_jobs": shipped_folder().resolve()}
    for name in CROWDML_PACKAGES:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(targets[name], target_is_directory=True)
    return folder


def python_command(profile, folder: Path,
                   python: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """How to start the interpreter of `profile`'s job stack (or `python`, a job environment
    just built): its first words (a script or `-c` follows) and the variables to set besides
    the profile's sealed ones (`folder` receives the staged links)."""
    # -P: the working folder (or a script's) is not put first on sys.path, where a stray
    # numpy.py or optax/ would shadow the stack's packages.
    python = python or interpreter(profile.stack)
    # -s: nor is the user's site-packages.
    return [str(python), "-s", "-P"], {"PYTHONPATH": str(stage(folder / "path"))}


def job_command(profile, module: str, folder: Path,
                python: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """`python_command` for `python -m module`."""
    command, extra = python_command(profile, folder, python)
    return command + ["-m", module], extra


def check_environment(profile, python: Path | None = None) -> None:
    """`profile.check_environment` run where the jobs run: in the stack's interpreter (or
    `python`), a short process without jax, under the environment the job process gets. What a
    worker calls before it deposits."""
    call(profile, "check", {"profile": profile.model_dump(mode="json")}, python=python)


def start(profile, module: str, args: list[str], folder: Path, *, python: Path | None = None,
          cache_folder: Path | None = None, stdin=None, answer: bool = False, stderr=None,
          new_session: bool = False) -> subprocess.Popen:
    """Start `python -m module args…` in `profile`'s job stack (or `python`), under the
    profile's sealed environment; `folder` receives the staged package links, `cache_folder`
    (default: the configured one) is the child's data cache. Its stdout is piped with
    `answer` (a call's answer comes there), else dropped."""
    from .data import CACHE_FOLDER_VARIABLE, cache_root, limit_variables
    from .profile import environment_for

    command, extra = job_command(profile, module, folder, python)
    # The child reads no config: it is handed the cache folder and the read limits (a job
    # reads URIs its spec names, e.g. a model to evaluate), and nothing else of ours.
    parent = {**os.environ, **extra, CACHE_FOLDER_VARIABLE: str(cache_folder or cache_root()),
              **limit_variables()}
    try:
        return subprocess.Popen(command + args, env=environment_for(profile, parent),
                                stdin=stdin, text=True,
                                stdout=subprocess.PIPE if answer else subprocess.DEVNULL,
                                stderr=stderr, start_new_session=new_session)
    except OSError as exc:
        raise EnvironmentMismatch(f"job stack {profile.stack}'s interpreter {command[0]} does "
                                  f"not run: {exc.strerror}") from None


def call(profile, name: str, request: dict, *, python: Path | None = None) -> dict:
    """Run the call `name` with `request` in `profile`'s job stack and return its answer; its
    CrowdmlError is raised here as its own class."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="crowdml-call-") as tmp:
        child = start(profile, "crowdml_compute.child", [], Path(tmp), python=python,
                      stdin=subprocess.PIPE, answer=True, stderr=subprocess.PIPE)
        out, err = child.communicate(json.dumps({"call": name, "request": request}) + "\n")
    try:
        answer = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentMismatch(
            f"job stack {profile.stack}'s interpreter failed: {last}; build its environment "
            f"again (`ape crowdml job-env create {profile.stack}`)") from None
    if "error" in answer:
        raise_recorded(answer["error"])
    return answer["result"]


# Answers already read in this process, by job file digest, hyperparameters and canary: a job's
# Config is a function of its file's bytes, so one answer holds for the process's life.
_JOB_CONFIGS: dict[tuple[str, str, str], dict] = {}
# One serving child per job stack answers this process's calls: jax and flax are
# imported once, not per call (about 3 s each); it stops when this process exits.
_SERVERS: dict[str, tuple[subprocess.Popen, Path]] = {}
_STACK_LOCKS: dict[str, threading.Lock] = {}
_SERVERS_LOCK = threading.Lock()


def _drop_server(stack: str) -> None:
    import shutil

    server, folder = _SERVERS.pop(stack)
    server.kill()
    server.wait()
    shutil.rmtree(folder, ignore_errors=True)


atexit.register(lambda: [_drop_server(stack) for stack in list(_SERVERS)])


def served_call(profile, name: str, request: dict) -> dict:
    """`call`, answered by this process's serving child of `profile`'s stack (started on first
    use; one call at a time per stack). A child that died, or answered with anything but its
    one JSON line, is dropped and the call made once more as a one-shot `call`, whose error,
    if any, is raised."""
    with _SERVERS_LOCK:
        lock = _STACK_LOCKS.setdefault(profile.stack, threading.Lock())
    with lock:
        known = _SERVERS.get(profile.stack)
        if known is None or known[0].poll() is not None:
            import tempfile

            if known is not None:
                _drop_server(profile.stack)
            folder = Path(tempfile.mkdtemp(prefix="crowdml-serve-"))
            known = _SERVERS[profile.stack] = (start(
                profile, "crowdml_compute.child", [], folder, stdin=subprocess.PIPE,
                answer=True, stderr=subprocess.DEVNULL), folder)
        server = known[0]
        try:
            server.stdin.write(json.dumps({"call": name, "request": request}) + "\n")
            server.stdin.flush()
            answer = json.loads(server.stdout.readline())
        except (OSError, ValueError):
            _drop_server(profile.stack)
            answer = None
    if answer is None:
        return call(profile, name, request)
    if "error" in answer:
        raise_recorded(answer["error"])
    return answer["result"]


def job_config(profile, path: Path, hparams: dict, canary: dict | str | None = None,
               expected_digest: str | None = None) -> dict:
    """`jobs.read_job_config` for the job file at `path`: here when this process has jax (a
    job environment, a benchmark), else in `profile`'s job stack, or the default profile's
    where that stack has no environment here (a GPU spec made on a laptop). The plugin has no
    jax: it asks a child. The answer names the digest of the file the child read: one other
    than the file's here (or `expected_digest`) is refused."""
    import importlib.util

    from .digest import file_digest
    from .jobs import read_job_config

    key = (file_digest(path).hex(), json.dumps(hparams, sort_keys=True),
           json.dumps(canary, sort_keys=True))
    if key not in _JOB_CONFIGS:
        if importlib.util.find_spec("jax") is not None:
            answer = read_job_config(path, hparams, canary)
        else:
            from .errors import EnvironmentMissing
            from .profile import DEFAULT_PROFILE, get_profile

            request = {"job": str(Path(path).resolve()), "hparams": hparams, "canary": canary}
            try:
                answer = served_call(profile, "job-config", request)
            except EnvironmentMissing:
                if profile == get_profile(DEFAULT_PROFILE):
                    raise
                answer = served_call(get_profile(DEFAULT_PROFILE), "job-config", request)
        if answer["digest"] != "0x" + key[0]:
            raise SpecError(f"job file {path} changed while it was read; read it again")
        _JOB_CONFIGS[key] = answer
    answer = _JOB_CONFIGS[key]
    if expected_digest is not None and answer["digest"] != expected_digest:
        raise SpecError(f"job file {path} has keccak256 {answer['digest']}, the spec expects "
                        f"{expected_digest}")
    return answer


# ---------------------------------------------------------------- the calls, in the child


def _check(request: dict) -> dict:
    """The static checks of `profile.check_environment`, where the jobs run."""
    from .profile import Profile, check_environment

    check_environment(Profile.model_validate(request["profile"]))
    return {}


def _job_config(request: dict) -> dict:
    """A job file's digest, the hyperparameters as its `Config` stores them, and (with
    "canary": overrides, or "default" for the job's own `canary(config)`) the canary's
    overrides as the Config reads them."""
    from .jobs import read_job_config

    return read_job_config(Path(request["job"]), request["hparams"], request.get("canary"))


CALLS = {"check": _check, "job-config": _job_config}


def _answer(name: str, request: dict) -> dict:
    try:
        return {"result": CALLS[name](request)}
    except CrowdmlError as exc:
        return {"error": error_record(exc)}
    except Exception as exc:  # noqa: BLE001 - a job file's own failure, or a broken stack
        failure = f"{type(exc).__name__}: {first_line(exc)}"
        if "job" in request:  # the requester's job file (SyntaxError, NameError, …)
            return {"error": error_record(SpecError(f"job file {request['job']} failed: "
                                                    f"{failure}"))}
        stack = request.get("profile", {}).get("stack", "?")
        return {"error": error_record(EnvironmentMismatch(
            f"job stack {stack}'s interpreter failed: {failure}; build its environment again "
            f"(`ape crowdml job-env create {stack}`)"))}


def main() -> int:
    """`python -m crowdml_compute.child`: for each {"call": NAME, "request": …} line on stdin,
    one JSON line, {"result": …} or {"error": record}, until stdin ends (a one-shot `call`
    sends one line, a serving child many)."""
    # Answers go to the real stdout alone: whatever a job file prints goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        message = json.loads(line)
        answers.write(json.dumps(_answer(message["call"], message["request"])) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
