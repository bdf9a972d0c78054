"""Job environments: the interpreter a job runs in, apart from the plugin's.

eth-ape holds the plugin's environment at numpy<2, and so at jax 0.7. A job needs none of ape:
the runner starts every job in a fresh process anyway, so that process is an interpreter of the
job's own environment, with its own pinned stack (current jax, flax, optax, numpy 2). A profile
names its stack (`Profile.stack`); a stack is a lock file shipped beside this module
(`stacks/<name>.txt`, every package with its hashes) and the Python version it is for.

- `ape crowdml job-env create [STACK]` (or `make env` in a checkout) builds a stack's
  environment under `crowdml: job_env_folder:` (default ~/.cache/crowdml/job-envs), or at any
  path that `crowdml: job_envs: {STACK: /path/to/python}` then names.
- The job's process imports the compute side only (it imports nothing from ape). Its
  interpreter sees crowdml's two packages through a folder of links (`stage`) on PYTHONPATH, not
  the plugin's site-packages, so nothing of the plugin's stack leaks in; `-s` keeps the user's
  site-packages out as well.
- A stack with no lock (`PLUGIN_STACK`) is the plugin's own environment with the `jobs` extra:
  jobs run in the plugin's interpreter, as before job environments existed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CrowdmlError, EnvironmentMismatch, EnvironmentMissing, first_line

STACKS_FOLDER = Path(__file__).parent / "stacks"
PLUGIN_STACK = "plugin"  # the plugin's own interpreter (jax 0.7.1, numpy 1.26, Python 3.11)
# Written last into an environment `create` built: a folder without it is a broken build.
COMPLETE_MARKER = ".crowdml-complete"
# The two packages a job's process imports from crowdml, linked into its PYTHONPATH.
CROWDML_PACKAGES = ("crowdml_compute", "crowdml_jobs")


@dataclass(frozen=True)
class Stack:
    name: str
    python: str  # major.minor of the interpreter the lock is for

    @property
    def lock(self) -> Path | None:
        return None if self.name == PLUGIN_STACK else STACKS_FOLDER / f"{self.name}.txt"


STACKS = {stack.name: stack for stack in (
    Stack(PLUGIN_STACK, "3.11"),
    Stack("jax0.11.2-py3.12", "3.12"),
    Stack("jax0.11.2-cuda13-py3.12", "3.12"),
)}


def get_stack(name: str) -> Stack:
    try:
        return STACKS[name]
    except KeyError:
        raise EnvironmentMismatch(f"unknown job stack {name!r}; known: {', '.join(STACKS)}") \
            from None


def environment_folder(stack: str) -> Path:
    """Where `create` puts a stack's environment by default."""
    from .host import settings

    return Path(settings().job_env_folder).expanduser() / stack


def interpreter(stack: str) -> Path:
    """The Python that runs `stack`'s jobs on this machine: `crowdml: job_envs:` names it, else
    the environment `create` made; EnvironmentMismatch (before any deposit) when there is none."""
    from .host import settings

    if get_stack(stack).lock is None:
        return Path(sys.executable)
    named = settings().job_envs.get(stack)
    python = Path(named).expanduser() if named else environment_folder(stack) / "bin" / "python"
    built_here = not named and python.exists()
    if built_here and not (environment_folder(stack) / COMPLETE_MARKER).exists():
        raise EnvironmentMissing(
            f"job stack {stack}'s environment {environment_folder(stack)} is not complete (a "
            f"build stopped); remove it and run `ape crowdml job-env create {stack}`")
    if not python.exists():
        raise EnvironmentMissing(
            f"job stack {stack} has no environment here ({python} is missing); build it with "
            f"`ape crowdml job-env create {stack}` or name its python under `crowdml: job_envs:`")
    return python


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
    if python is None and get_stack(profile.stack).lock is None:
        return [str(interpreter(profile.stack)), "-P"], {}
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
    `python`), a short process without jax, under the environment the job process gets; or
    here for the plugin's own stack. What a worker calls before it deposits."""
    import tempfile

    from .profile import check_environment as check_here, environment_for

    if get_stack(profile.stack).lock is None and python is None:
        return check_here(profile)
    with tempfile.TemporaryDirectory(prefix="crowdml-check-") as tmp:
        profile_file = Path(tmp) / "profile.json"
        profile_file.write_text(profile.model_dump_json())
        command, extra = job_command(profile, "crowdml_compute.jobenv", Path(tmp), python)
        from .data import CACHE_FOLDER_VARIABLE, cache_root

        env = environment_for(profile, {**os.environ, **extra,
                                        CACHE_FOLDER_VARIABLE: str(cache_root())})
        try:
            done = subprocess.run(command + ["check", str(profile_file)], env=env,
                                  capture_output=True, text=True)
        except OSError as exc:
            raise EnvironmentMismatch(f"job stack {profile.stack}'s interpreter {command[0]} "
                                      f"does not run: {exc.strerror}") from None
    if done.returncode != 0:
        try:
            error = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise EnvironmentMismatch(
                f"job stack {profile.stack}'s interpreter failed: {last}; build its "
                f"environment again (`ape crowdml job-env create {profile.stack}`)") from None
        raise EnvironmentMismatch(error["message"])


def _version(python: str) -> str | None:
    """major.minor of an interpreter, or None if it does not run (a pyenv shim of a version
    that is not selected fails, for one)."""
    try:
        done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_python(version: str) -> tuple[str | None, str | None]:
    """An interpreter of `version` that runs: pythonX.Y on PATH, else one pyenv installed."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        if _version(candidate) == version:
            return candidate, version
    return None, None


def create(stack: str, folder: Path | None = None, python: str | None = None, *,
           system_site_packages: bool = False, install: bool = True, echo=print) -> Path:
    """Build `stack`'s environment (a venv) at `folder` and install its lock, every package
    checked against its hash. `python`: the interpreter to build it from (default: pythonX.Y
    on PATH). With `system_site_packages` and `install=False`, a machine whose image already
    carries the stack (a GPU machine's) gets an environment over it; the profile's checks still
    refuse any version or build the profile does not pin. Returns the new interpreter."""
    spec = get_stack(stack)
    if spec.lock is None:
        raise CrowdmlError(f"job stack {stack} is the plugin's own environment: "
                           "`pip install ape-crowdml[jobs]`")
    folder = Path(folder) if folder is not None else environment_folder(stack)
    base, version = find_python(spec.python) if python is None else (python, _version(python))
    if version != spec.python:
        raise CrowdmlError(f"job stack {stack} needs Python {spec.python}, "
                           f"{base or 'none was found'} is {version or 'not one that runs'}; "
                           "name one with --python")
    if folder.exists():
        raise CrowdmlError(f"{folder} exists; remove it first, or build elsewhere (--path)")
    echo(f"creating {folder} with Python {version} ({base})")
    # A venv cannot be moved (its scripts name its path), so it is built in place and marked
    # complete last: a half-built one is never taken for an environment (`interpreter`).
    command = [base, "-m", "venv", str(folder)]
    if system_site_packages:
        command.append("--system-site-packages")
    try:
        subprocess.run(command, check=True)
        if install:
            echo(f"installing {spec.lock.name} (hash-checked)")
            subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            "--require-hashes", "--no-deps", "-r", str(spec.lock)], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise CrowdmlError(f"building job stack {stack} failed: {first_line(exc)}") from None
    (folder / COMPLETE_MARKER).write_text(f"{stack}\n")
    return folder / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    """`python -m crowdml_compute.jobenv check PROFILE_JSON`, in a job environment: the
    static checks of `profile.check_environment`; on failure, one JSON line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m crowdml_compute.jobenv")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("profile", type=Path)
    args = parser.parse_args(argv)
    from .profile import Profile, check_environment

    try:
        check_environment(Profile.model_validate_json(args.profile.read_text()))
    except CrowdmlError as exc:
        print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
