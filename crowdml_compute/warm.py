"""Warm job processes: one child per (profile, device count, job folders) that seals its
environment and imports jax once, then runs job after job.

A cold job (`runner.start_job`) pays for a fresh Python, the jax import, the native-library
checks and XLA's compile before it trains: about 13 s for the tiny job here, of which its own
run is under 3 s. A worker that takes many small tasks (the agent with `--warm-jobs`, or
`crowdml: worker: warm_jobs: true`) keeps one such process per profile instead.

What keeps its digests equal to a cold run's: the child is started exactly as a cold one (the
same sealed environment, `profile.apply_environment` before jax, the same CPU pinning), every
job goes through the same `runner.execute` (environment, process and data checks, the job
module loaded afresh from its file, keys only from the coin), and nothing a job leaves behind
feeds the next: jax holds no random state, and a job's jitted functions are new objects each
time. tests/test_jobs_warm.py runs specs one after another in one warm process and checks each
digest against a cold run.

Protocol: the parent writes one JSON line per job on the child's stdin,
{"spec": FILE, "coin": "0x…", "out": DIR}; the child writes the job's files into DIR as the
cold runner does (result.bin and result.json, or error.json), then an empty DONE_FILE last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .child import start
from .errors import CrowdmlError
from .runner import JobProcess, execute, write_outcome
from .spec import JobSpec, load_spec, save_spec

DONE_FILE = "done"
POLL_SECONDS = 0.05


class WarmJob(JobProcess):
    """A job handed to a warm child: `running` until the child marks it done (or dies)."""

    def __init__(self, child: subprocess.Popen, out_dir: Path, tmp: Path, stderr: Path,
                 on_cancel):
        super().__init__(child, out_dir, tmp, stderr)
        self._on_cancel = on_cancel

    @property
    def running(self) -> bool:
        return not (self._out_dir / DONE_FILE).exists() and self._process.poll() is None

    def result(self):
        try:
            while self.running:
                time.sleep(POLL_SECONDS)
            if not (self._out_dir / DONE_FILE).exists():
                text = self._stderr.read_text() if self._stderr.exists() else ""
                last = text.strip().splitlines()[-1:] or ["no output"]
                raise CrowdmlError(f"warm job process exited with {self._process.returncode}: "
                                   f"{last[0]}")
            return self._load()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def cancel(self) -> None:
        """Stop the job: its child goes with it (a job cannot be interrupted inside a process);
        the pool starts a fresh one for the next job."""
        self._on_cancel()
        shutil.rmtree(self._tmp, ignore_errors=True)


class WarmPool:
    """The warm children of one worker, started on first use; `close()` stops them."""

    def __init__(self, cache_folder: Path):
        self._cache_folder = cache_folder
        self._children: dict[tuple, tuple[subprocess.Popen, Path]] = {}

    def _child(self, spec: JobSpec, devices: int,
               job_folders: Sequence[str | Path]) -> tuple[tuple, subprocess.Popen, Path]:
        key = (spec.profile.model_dump_json(), devices, tuple(str(f) for f in job_folders))
        known = self._children.get(key)
        if known and known[0].poll() is None:
            return key, *known
        if known:  # its child died: its folder goes with it
            shutil.rmtree(known[1].parent, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix="crowdml-warm-"))
        profile_file = folder / "profile.json"
        profile_file.write_text(spec.profile.model_dump_json())
        args = ["--profile", str(profile_file), "--devices", str(devices)]
        for job_folder in job_folders:
            args += ["--jobs-folder", str(job_folder)]
        stderr = folder / "stderr.txt"
        try:
            with open(stderr, "w") as stderr_file:
                child = start(spec.profile, "crowdml_compute.warm", args, folder,
                              cache_folder=self._cache_folder, stdin=subprocess.PIPE,
                              answer=False, stderr=stderr_file)
        except CrowdmlError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._children[key] = (child, stderr)
        return key, child, stderr

    def start(self, spec: JobSpec, coin: bytes, *, devices: int = 1,
              job_folders: Sequence[str | Path] = ()) -> WarmJob:
        """Hand `spec` with `coin` to the warm child for its profile; returns at once."""
        key, child, stderr = self._child(spec, devices, job_folders)
        tmp = Path(tempfile.mkdtemp(prefix="crowdml-"))
        out_dir = tmp / "out"
        out_dir.mkdir()
        request = {"spec": str(save_spec(spec, tmp / "spec.json")), "coin": "0x" + coin.hex(),
                   "out": str(out_dir)}
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.flush()
        return WarmJob(child, out_dir, tmp, stderr, on_cancel=lambda: self._stop(key))

    def _stop(self, key: tuple) -> None:
        child, stderr = self._children.pop(key, (None, None))
        if child is not None:
            child.kill()
            child.wait()
            shutil.rmtree(stderr.parent, ignore_errors=True)  # its profile, links and log

    def close(self) -> None:
        for key in list(self._children):
            self._stop(key)


def serve(profile_file: Path, devices: int, job_folders: Sequence[Path]) -> None:
    """The child: seal the environment once, then run each requested job as a cold child would."""
    from .keys import coin_from_hex
    from .profile import Profile, apply_environment

    profile = Profile.model_validate_json(profile_file.read_text())
    apply_environment(profile, devices)
    for line in sys.stdin:
        request = json.loads(line)
        out = Path(request["out"])
        try:
            spec = load_spec(request["spec"])
            if spec.profile != profile:
                raise CrowdmlError("this warm process runs another profile's jobs")
            result = execute(spec, coin_from_hex(request["coin"]), devices=devices,
                             job_folders=job_folders)
        except CrowdmlError as exc:
            write_outcome(out, error=exc)
        else:
            write_outcome(out, result=result)
        (out / DONE_FILE).touch()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m crowdml_compute.warm")
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--jobs-folder", type=Path, action="append", default=[])
    args = parser.parse_args()
    serve(args.profile, args.devices, args.jobs_folder)


if __name__ == "__main__":
    main()
