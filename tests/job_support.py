"""Running a job's own process by hand, as the runner does: the interpreter of the profile's
job stack (crowdml_compute/jobenv.py) with crowdml's packages staged on its PYTHONPATH."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from crowdml_compute.child import job_command, python_command
from crowdml_compute.profile import get_profile


# One folder of staged links for every command of the session (the links do not change).
_FOLDER = Path(tempfile.mkdtemp(prefix="crowdml-test-"))
atexit.register(shutil.rmtree, _FOLDER, True)


def job_process(module: str = "crowdml_compute.runner", profile: str = "cpu-exact",
                env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(command's first words, environment) to start `python -m module` where `profile`'s
    jobs run; the command's own arguments follow."""
    command, extra = job_command(get_profile(profile), module, _FOLDER)
    return command, {**(os.environ if env is None else env), **extra}


def job_python(profile: str = "cpu-exact", env: dict[str, str] | None = None):
    """(the interpreter's command words, environment) for `python -c SCRIPT` there."""
    command, extra = python_command(get_profile(profile), _FOLDER)
    return command, {**(os.environ if env is None else env), **extra}
