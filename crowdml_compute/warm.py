"""Warm job processes: children that seal their environment and import jax once, then run job
after job, one at a time; per (profile, device count, job folders), as many as jobs run at once.

A cold job (`runner.start_job`) pays for a fresh Python, the jax import, the native-library
checks and XLA's compile before it trains: about 5 s of CPU for the tiny MLP job here, of which
its own run is under 0.5 s. A warm child pays that once, and XLA's compile once per program: it
keeps what it compiled in a folder of its own (keys.private_compile_cache), so a later job of
the same program (the same spec with another coin, a canary run again) loads it. A worker
that takes many small tasks (the agent with `--warm-jobs`, or `crowdml: worker: warm_jobs:
true`) keeps such processes instead, for its canaries too; the workers of one process share
them (`WarmPool.shared`).

What keeps its digests equal to a cold run's: the child is started exactly as a cold one (the
same sealed environment, `profile.apply_environment` before jax, the same CPU pinning), every
job goes through the same `runner.execute` (environment, process and data checks, the job
module loaded afresh from its file, keys only from the coin), and nothing a job leaves behind
feeds the next: jax holds no random state, and a job's jitted functions are new objects each
time. A program loaded from the child's folder is the executable this same child compiled for
the same program text under the same settings (jax's cache key covers both). tests/jobs/
test_jobs_warm.py runs specs one after another in one warm process and checks each digest
against a cold run.

Protocol: the parent writes one JSON line per job on the child's stdin,
{"spec": FILE, "coin": "0x…", "out": DIR}; the child writes the job's files into DIR as the
cold runner does (result.bin and result.json, or error.json), then an empty DONE_FILE last.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .child import start
from .errors import CrowdmlError
from .runner import JobProcess, execute, write_outcome
from .spec import JobSpec, load_spec, save_spec

DONE_FILE = "done"
POLL_SECONDS = 0.05
# Idle children a pool keeps (each holds jax and its compiled code, about 370 MiB): beyond
# that, idle children are stopped, each profile's least recently used first.
MAX_IDLE_CHILDREN = 4


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
            try:
                while self.running:
                    time.sleep(POLL_SECONDS)
            except BaseException:  # an interrupt while waiting stops the job, as a cold one's
                self._on_cancel()
                raise
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
        the other children run on."""
        self._on_cancel()
        shutil.rmtree(self._tmp, ignore_errors=True)


@dataclass
class _Child:
    process: subprocess.Popen
    stderr: Path
    out_dir: Path | None = None  # the job it runs, until that job's DONE_FILE (or folder) goes

    @property
    def idle(self) -> bool:
        return self.process.poll() is None and (
            self.out_dir is None or (self.out_dir / DONE_FILE).exists()
            or not self.out_dir.exists())  # its job's result was read and its folder removed


class WarmPool:
    """Warm children, per (profile, device count, job folders) as many as jobs run at once,
    each running one job at a time; started on first use. `shared(cache_folder)` is the
    process's pool: every worker of one process (the demo's, a test session's) uses it, and it
    stops with the process. Safe to use from several threads (the agent's admissions)."""

    _shared: dict[Path, WarmPool] = {}
    _shared_lock = threading.Lock()

    def __init__(self, cache_folder: Path):
        self._cache_folder = cache_folder
        self._children: dict[tuple, list[_Child]] = {}
        self._lock = threading.RLock()

    @classmethod
    def shared(cls, cache_folder: Path) -> WarmPool:
        with cls._shared_lock:
            if not cls._shared:
                atexit.register(lambda: [pool.close() for pool in cls._shared.values()])
            if cache_folder not in cls._shared:
                cls._shared[cache_folder] = cls(cache_folder)
            return cls._shared[cache_folder]

    def _new_child(self, spec: JobSpec, devices: int, job_folders: Sequence[str | Path]) -> _Child:
        folder = Path(tempfile.mkdtemp(prefix="crowdml-warm-"))
        profile_file = folder / "profile.json"
        profile_file.write_text(spec.profile.model_dump_json())
        args = ["--profile", str(profile_file), "--devices", str(devices),
                "--programs", str(folder / "programs")]
        for job_folder in job_folders:
            args += ["--jobs-folder", str(job_folder)]
        stderr = folder / "stderr.txt"
        try:
            with open(stderr, "w") as stderr_file:
                process = start(spec.profile, "crowdml_compute.warm", args, folder,
                                cache_folder=self._cache_folder, stdin=subprocess.PIPE,
                                answer=False, stderr=stderr_file)
        except CrowdmlError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return _Child(process, stderr)

    def start(self, spec: JobSpec, coin: bytes, *, devices: int = 1,
              job_folders: Sequence[str | Path] = ()) -> WarmJob:
        """Hand `spec` with `coin` to an idle warm child of its profile (a new one if none is
        idle); returns at once."""
        key = (spec.profile.model_dump_json(), devices, tuple(str(f) for f in job_folders))
        tmp = Path(tempfile.mkdtemp(prefix="crowdml-"))
        out_dir = tmp / "out"
        out_dir.mkdir()
        request = {"spec": str(save_spec(spec, tmp / "spec.json")), "coin": "0x" + coin.hex(),
                   "out": str(out_dir)}
        with self._lock:
            children = self._children.setdefault(key, [])
            for dead in [c for c in children if c.process.poll() is not None]:
                children.remove(dead)  # a child that died: its folder goes with it
                shutil.rmtree(dead.stderr.parent, ignore_errors=True)
            child = next((c for c in children if c.idle), None)
            if child is None:
                try:
                    child = self._new_child(spec, devices, job_folders)
                except CrowdmlError:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                children.append(child)
            child.out_dir = out_dir
            try:
                child.process.stdin.write(json.dumps(request) + "\n")
                child.process.stdin.flush()
            except OSError as exc:  # it died after the poll above
                self._stop(key, child)
                shutil.rmtree(tmp, ignore_errors=True)
                raise CrowdmlError(f"warm job process exited: {exc.strerror}") from None
            children.remove(child)
            children.append(child)  # each list runs from the longest idle to the latest used
            idle = [(k, c) for k, cs in self._children.items() for c in cs if c.idle]
            for other_key, other in idle[:max(0, len(idle) - MAX_IDLE_CHILDREN)]:
                self._stop(other_key, other)
        return WarmJob(child.process, out_dir, tmp, child.stderr,
                       on_cancel=lambda: self._cancel(key, child, out_dir))

    def _cancel(self, key: tuple, child: _Child, out_dir: Path) -> None:
        """Stop `child` if it still runs the job of `out_dir`; a job that ended leaves its
        child alone, which may run another worker's job by now."""
        with self._lock:
            if (child.out_dir == out_dir and not (out_dir / DONE_FILE).exists()
                    and child.process.poll() is None):
                self._stop(key, child)

    def _stop(self, key: tuple, child: _Child) -> None:
        with self._lock:
            if child in self._children.get(key, []):
                self._children[key].remove(child)
        child.process.kill()
        child.process.wait()
        # its profile, links, log and compiled programs
        shutil.rmtree(child.stderr.parent, ignore_errors=True)

    def close(self) -> None:
        for key, children in list(self._children.items()):
            for child in list(children):
                self._stop(key, child)


def serve(profile_file: Path, devices: int, job_folders: Sequence[Path], programs: Path) -> None:
    """The child: seal the environment once, then run each requested job as a cold child would,
    keeping the programs it compiles in `programs` for the jobs after (keys.private_compile_cache;
    the pool removes the folder with the child)."""
    from .keys import configure_jax, private_compile_cache
    from .profile import Profile, apply_environment

    profile = Profile.model_validate_json(profile_file.read_text())
    apply_environment(profile, devices)
    # Before anything compiles: jax decides once per process whether it uses a cache.
    configure_jax({**profile.jax_config, **private_compile_cache(programs)}, profile.flax_config)
    try:
        _serve_jobs(profile, devices, job_folders, programs)
    finally:  # the pool removes the folder too; a parent killed outright cannot
        shutil.rmtree(programs, ignore_errors=True)


def _serve_jobs(profile, devices: int, job_folders: Sequence[Path], programs: Path) -> None:
    from .keys import PRIVATE_CACHE_MAX_BYTES, coin_from_hex

    for line in sys.stdin:
        request = json.loads(line)
        out = Path(request["out"])
        try:
            spec = load_spec(request["spec"])
            if spec.profile != profile:
                raise CrowdmlError("this warm process runs another profile's jobs")
            result = execute(spec, coin_from_hex(request["coin"]), devices=devices,
                             job_folders=job_folders, compile_cache=programs)
        except CrowdmlError as exc:
            write_outcome(out, error=exc)
        else:
            write_outcome(out, result=result)
        _keep_under(programs, PRIVATE_CACHE_MAX_BYTES)
        (out / DONE_FILE).touch()


def _keep_under(folder: Path, limit: int) -> None:
    """Empty the compiled-programs folder once it holds more than `limit` bytes (between jobs:
    a program missing from it is compiled again). A folder it cannot read or empty costs
    compiles, never the job: jax compiles what it cannot load."""
    try:
        files = [path for path in folder.iterdir() if path.is_file()] if folder.exists() else []
        if sum(path.stat().st_size for path in files) > limit:
            for path in files:
                path.unlink(missing_ok=True)
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m crowdml_compute.warm")
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--jobs-folder", type=Path, action="append", default=[])
    parser.add_argument("--programs", type=Path, required=True)
    args = parser.parse_args()
    serve(args.profile, args.devices, args.jobs_folder, args.programs)


if __name__ == "__main__":
    main()
