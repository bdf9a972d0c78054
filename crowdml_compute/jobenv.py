"""Job environments: the interpreter a job runs in, apart from the plugin's.

eth-ape holds the plugin's environment at numpy<2, and the plugin needs no jax. A job needs none of ape:
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
- Stacks are data: a stack is its lock, `stacks/<name>.txt`, for the Python its name ends with
  (`jax0.11.2-py3.12`: Python 3.12). A new stack is a new lock (`make stack-locks` from its
  `.in` file), with no code to change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import CrowdmlError, EnvironmentMismatch, EnvironmentMissing, first_line

STACKS_FOLDER = Path(__file__).parent / "stacks"
# Written last into an environment `create` built: a folder without it is a broken build.
COMPLETE_MARKER = ".crowdml-complete"
# The two packages a job's process imports from crowdml, linked into its PYTHONPATH.
CROWDML_PACKAGES = ("crowdml_compute", "crowdml_jobs")


@dataclass(frozen=True)
class Stack:
    name: str
    python: str  # major.minor of the interpreter the lock is for

    @property
    def lock(self) -> Path:
        return STACKS_FOLDER / f"{self.name}.txt"


def _stacks() -> dict[str, Stack]:
    stacks = {}
    for lock in sorted(STACKS_FOLDER.glob("*.txt")):
        _, _, python = lock.stem.rpartition("-py")
        stacks[lock.stem] = Stack(lock.stem, python)
    return stacks


STACKS = _stacks()


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

    get_stack(stack)
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
