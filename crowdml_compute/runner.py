"""Run a job spec with a coin and produce its result digest, reproducibly.

Job file contract
-----------------
A job is a plain Python file (see jobs/) that defines one entry function::

    def run(hparams: dict, data: dict[str, numpy.ndarray], keys: KeyStream, report: Report) -> bytes

- `hparams`: the spec's hyperparameters. A job defines them as a `Config` model derived from
  `crowdml_compute.spec.HParams`; `make_spec` stores them as `Config` normalises them (types coerced,
  defaults filled, None dropped), so one run has one spec digest.
- `data`: x_train, y_train, x_test, y_test from the spec's dataset, already digest-checked.
- `keys`: a `crowdml_compute.keys.KeyStream` built from the coin. Every random draw must come from it
  (`keys.next()`, or `draw(keys.base, ctr)` over counters from `keys.reserve(n)`); a job that
  seeds anything else is not reproducible from the coin.
- `report`: `report.start(epochs, steps_per_epoch=…, batches_in_data=…)` once (the step counts
  are optional: with them a worker estimates the whole job's time from its canary's), `report.epoch(tree, **metrics)` after each epoch (adds the
  digest of `encode_pytree(tree)` to the transcript, records the epoch's metrics such as its
  mean loss, and moves the progress bar),
  `report.metric(name, value)` for summary figures such as test accuracy.
- returns the result's canonical bytes, `digest.encode_pytree(...)` or `digest.encode_bits(...)`;
  the result digest is their keccak256. Extra files a job reads (e.g. a model to evaluate) must be
  named in `hparams` with their digest and read through `crowdml_compute.data.read_verified`.

Optionally, `canary(config) -> dict`: the hyperparameter overrides of the job's canary, a short run
at the job's real model and batch shapes (without it, the canary is the whole job).

Processes
---------
`run_job` (any process, jax loaded or not) starts a fresh child and waits for it (`start_job`
returns at once, for a caller that does other things while the job runs),
`python -m crowdml_compute.runner --spec FILE --coin 0x… --out DIR --devices D
[--jobs-folder DIR …]`, with the environment the spec's profile allows
(`profile.environment_for`). The child runs the job on D devices (virtual ones on CPU;
parallel.py keeps the digest independent of D), pins its CPUs and seals its environment again
before importing jax (`profile.apply_environment`, so the same command run by hand is sealed
too), checks the environment and the data digest, finds the job by its keccak256
(crowdml_compute/jobs.py: the shipped jobs and the folders it is given; any working directory will do),
runs the job, and writes
`result.bin` (the artifact), `result.json` (digest, transcript, metrics) or `error.json` into DIR.
The same command is the user-facing CLI: it prints the digest on stdout and a progress bar on
stderr; bad input gives one line on stderr and exit 2. With `--coordinator HOST:PORT
--processes N --process-id I`, N such commands (on one host or several; process 0 serves the
coordinator) run one job together on all their devices (jax.distributed, parallel.py), and
each prints the job's digest, the one a single process gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .child import error_record, job_config, raise_recorded, start
from .digest import encode_pytree, keccak_digest
from .errors import CanaryMismatch, CrowdmlError, SpecError
from .jobs import (JobRegistry, _hparams_error, configured_job_folders, load_job,
                   load_job_file)  # noqa: F401 - load_job_file: named here too
from .spec import Canary, JobSpec, check_arithmetic, load_spec, save_spec

EXIT_BAD_INPUT = 2
ARTIFACT_FILE, RESULT_FILE, ERROR_FILE = "result.bin", "result.json", "error.json"


@dataclass(frozen=True)
class JobResult:
    digest: bytes  # keccak256(artifact): what the worker commits to
    artifact: bytes  # canonical encoding of the result, see digest.py
    transcript: list[str] = field(default_factory=list)  # 0x-hex digest after each epoch
    metrics: dict = field(default_factory=dict)  # e.g. {"test_accuracy": 0.97}
    epochs: list[dict] = field(default_factory=list)  # each epoch's metrics, e.g. {"loss": 0.3}
    # How long it took here (seconds after start at each epoch's end) and the job's step
    # counts: for this worker's own estimates, never delivered (it differs between workers).
    timing: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What the job says of its run besides the artifact: the digest, the transcript, each
        epoch's metrics and the final ones (JSON-ready). Only the digest is checked by anyone:
        the rest is the worker's word."""
        return {"digest": "0x" + self.digest.hex(), "transcript": self.transcript,
                "epochs": self.epochs, "metrics": self.metrics}

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / ARTIFACT_FILE).write_bytes(self.artifact)
        (out / RESULT_FILE).write_text(json.dumps({**self.summary(), "timing": self.timing},
                                                  indent=1, sort_keys=True))

    @classmethod
    def load(cls, out: Path) -> JobResult:
        summary = json.loads((out / RESULT_FILE).read_text())
        result = cls(bytes.fromhex(summary["digest"][2:]), (out / ARTIFACT_FILE).read_bytes(),
                     summary["transcript"], summary["metrics"], summary.get("epochs", []),
                     summary.get("timing", {}))
        if keccak_digest(result.artifact) != result.digest:
            raise CrowdmlError(f"{out / ARTIFACT_FILE} does not match the digest in {RESULT_FILE}")
        return result


class Report:
    """What a job tells the runner: per-epoch transcript, metrics, progress."""

    def __init__(self, progress: bool):
        self.progress = progress
        self.transcript: list[str] = []
        self.epochs: list[dict] = []
        self.metrics: dict = {}
        self.timing: dict = {}
        self._started = None
        self._bar = None
        self._pending = None

    def start(self, epochs: int, *, steps_per_epoch: int | None = None,
              batches_in_data: int | None = None) -> None:
        """`steps_per_epoch`: the steps each epoch runs; `batches_in_data`: the batches one pass
        over the training data holds (what an epoch runs when not capped)."""
        from time import monotonic

        self._started = monotonic()
        self.timing = {"epoch_ends": [], "steps_per_epoch": steps_per_epoch,
                       "batches_in_data": batches_in_data}
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=epochs, desc="training", unit="epoch", file=sys.stderr)

    def epoch(self, tree, **metrics) -> None:
        """Record the state after an epoch. It is hashed at the next call (or at close): by then
        the job has dispatched the next epoch, which JAX runs asynchronously, so hashing overlaps
        with compute instead of stalling it (measured: 7% of training time otherwise)."""
        self._flush()
        self._pending = (tree, metrics)

    def _flush(self) -> None:
        if self._pending is None:
            return
        tree, metrics = self._pending
        self._pending = None
        self.transcript.append("0x" + keccak_digest(encode_pytree(tree)).hex())
        if self._started is not None:  # hashing waited for the epoch: it has ended
            from time import monotonic

            self.timing["epoch_ends"].append(round(monotonic() - self._started, 4))
        values = {}
        if metrics:
            from .parallel import host_value

            values = {k: float(host_value(v)) for k, v in metrics.items()}
        self.epochs.append(values)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
            self._bar.update()

    def metric(self, name: str, value) -> None:
        self.metrics[name] = value

    def close(self) -> None:
        self._flush()
        if self._bar is not None:
            self._bar.close()


def execute(spec: JobSpec, coin: bytes, *, devices: int = 1, progress: bool = False,
            job_folders: Sequence[str | Path] = (),
            group: tuple[str, int, int] | None = None,
            compile_cache: Path | None = None) -> JobResult:
    """Run the job in this process on `devices` devices. The profile's environment must already
    be in force (`profile.apply_environment` before jax is imported); `run_job` arranges that.
    With `group` (coordinator host:port, processes, this process's id), the job runs on the
    devices of that many processes together (parallel.start_processes); each returns the
    whole result. `compile_cache`: a warm process's own folder of compiled programs
    (keys.private_compile_cache); a cold job compiles everything."""
    from pydantic import ValidationError

    from .data import load_dataset
    from .keys import KeyStream, configure_jax, private_compile_cache
    from .parallel import (agree_in_group, check_devices, configure_devices, start_processes,
                           stop_processes)
    from .profile import check_environment, check_process

    check_environment(spec, native=False)  # check_process hashes the native files actually loaded
    check_arithmetic(spec)
    cache = private_compile_cache(compile_cache) if compile_cache is not None else {}
    configure_jax({**spec.profile.jax_config, **cache}, spec.profile.flax_config)
    configure_devices(spec.profile, devices)
    if group is not None:
        start_processes(spec.profile, *group)
    report = Report(progress)
    try:
        refused = None
        try:
            check_process(spec.profile, devices)
            check_devices(spec.profile)
            if spec.profile.requires_exact:
                from .exact import self_test

                self_test()  # this machine's integer products are right, by both paths
            data = load_dataset(spec.data_uri, spec.data_digest)
            job = load_job(spec, job_folders)
        except CrowdmlError as exc:
            if group is None:
                raise
            refused = exc
        if group is not None:
            # Every process reaches this point, ready or not: one's refusal is every one's,
            # and processes given other specs, coins or device counts stop before training.
            agree_in_group(keccak_digest(spec.digest() + coin + devices.to_bytes(4, "big")),
                           refused)
        artifact = job.run(dict(spec.hparams), data, KeyStream(coin), report)
    except ValidationError as exc:
        raise _hparams_error(spec.job, exc) from None
    finally:
        report.close()
        if group is not None:
            stop_processes()
    return JobResult(keccak_digest(artifact), artifact, report.transcript, report.metrics,
                     report.epochs, report.timing)


def write_outcome(out: Path, *, result: JobResult | None = None,
                  error: CrowdmlError | None = None) -> None:
    """A job's files in `out`: the artifact and result.json, or error.json (the error's class
    name and message, raised again in the parent)."""
    out.mkdir(parents=True, exist_ok=True)
    if error is not None:
        (out / ERROR_FILE).write_text(json.dumps(error_record(error)))
    else:
        result.save(out)


class JobProcess:
    """A job running in its child process (`start_job`): `running` while it trains, then
    `result()`. The caller stays free meanwhile: the agent keeps revealing, settling and
    claiming its other tasks while one trains."""

    def __init__(self, process: subprocess.Popen, out_dir: Path, tmp: Path, stderr: Path | None):
        self._process = process
        self._out_dir = out_dir
        self._tmp = tmp
        self._stderr = stderr

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def result(self) -> JobResult:
        """Wait for the child, then its result; raises the child's CrowdmlError subclass. An
        interrupt (Ctrl-C: KeyboardInterrupt, or the SystemExit(130) ape's handler raises)
        while waiting stops the child before it goes on up."""
        try:
            try:
                returncode = self._process.wait()
            except BaseException:
                self._process.kill()
                self._process.wait()
                raise
            if returncode != 0 and not (self._out_dir / ERROR_FILE).exists():
                text = self._stderr.read_text() if self._stderr else ""
                last = text.strip().splitlines()[-1:] or ["no output"]
                raise CrowdmlError(f"job process exited with {returncode}: {last[0]}")
            return self._load()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _load(self) -> JobResult:
        if (self._out_dir / ERROR_FILE).exists():
            raise_recorded(json.loads((self._out_dir / ERROR_FILE).read_text()))
        return JobResult.load(self._out_dir)

    def cancel(self) -> None:
        """Stop the child (if still running) and remove its files."""
        if self.running:
            self._process.kill()
        self._process.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)


def start_job(spec: JobSpec, coin: bytes, *, devices: int = 1, out: str | Path | None = None,
              progress: bool = False,
              job_folders: Sequence[str | Path] | None = None) -> JobProcess:
    """Start `spec` with `coin` in a fresh child process under the spec's environment profile,
    on `devices` devices, and return at once. The child finds the job by digest among the shipped jobs and
    `job_folders` (default: the config's `jobs_folder`). With `out`, the artifact and
    result.json stay there."""
    if job_folders is None:
        job_folders = configured_job_folders()
    tmp = Path(tempfile.mkdtemp(prefix="crowdml-"))
    out_dir = Path(out) if out is not None else tmp / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ERROR_FILE).unlink(missing_ok=True)
    spec_path = save_spec(spec, tmp / "spec.json")
    args = ["--spec", str(spec_path), "--coin", "0x" + coin.hex(), "--out", str(out_dir),
            "--devices", str(devices), "--progress" if progress else "--no-progress"]
    for folder in job_folders:
        args += ["--jobs-folder", str(folder)]
    # Its stderr goes to a file, not a pipe: nobody reads a pipe while the job runs in the
    # background, and a full one would stall the child.
    stderr = None if progress else tmp / "stderr.txt"
    try:
        with open(stderr or os.devnull, "w") as stderr_file:
            # A session of its own: a Ctrl-C at the terminal reaches the parent alone, which
            # stops the child (`JobProcess.result`) instead of both printing their tracebacks.
            process = start(spec.profile, "crowdml_compute.runner", args, tmp,
                            stderr=None if progress else stderr_file, new_session=True)
    except CrowdmlError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return JobProcess(process, out_dir, tmp, stderr)


def run_job(spec: JobSpec, coin: bytes, *, devices: int = 1, out: str | Path | None = None,
            progress: bool = False, job_folders: Sequence[str | Path] | None = None) -> JobResult:
    """Run `spec` with `coin` in a fresh child process under the spec's environment profile, on
    `devices` devices (see parallel.py: the digest does not depend on it), and wait for it.

    The child finds the job by digest among the shipped jobs and `job_folders` (default: the
    config's `jobs_folder`). Raises the child's CrowdmlError subclass (DataDigestMismatch,
    EnvironmentMismatch, …) on bad input. With `out`, the artifact and result.json stay there.
    """
    return start_job(spec, coin, devices=devices, out=out, progress=progress,
                     job_folders=job_folders).result()


def canary_spec(spec: JobSpec, hparams: dict) -> JobSpec:
    """The spec of the canary run: the same job and data, with the canary's overrides."""
    return spec.model_copy(update={"hparams": {**spec.hparams, **hparams}, "canary": None})


def with_canary(spec: JobSpec, coin: bytes, hparams: dict | None = None, *, devices: int = 1,
                job_folders: Sequence[str | Path] | None = None) -> JobSpec:
    """Requester side: run the canary here and return the spec carrying its digest.

    `hparams` overrides the spec's hyperparameters for the canary run; by default the job's own
    `canary(config)` overrides (a few steps at the real shapes), or none (the whole job).
    `job_folders` is where the job is found besides the shipped ones (default: the config's).
    """
    if job_folders is None:
        job_folders = configured_job_folders()
    path = JobRegistry(job_folders).find(spec.job_digest, spec.job)
    overrides = job_config(spec.profile, path, spec.hparams,
                           "default" if hparams is None else hparams,
                           expected_digest=spec.job_digest)["canary"]
    result = run_job(canary_spec(spec, overrides), coin, devices=devices, job_folders=job_folders)
    canary = Canary(coin="0x" + coin.hex(), hparams=overrides, digest="0x" + result.digest.hex())
    return spec.model_copy(update={"canary": canary})


def check_canary(spec: JobSpec, devices: int = 1,
                 job_folders: Sequence[str | Path] | None = None,
                 start=None) -> JobResult | None:
    """Worker side, before committing: reproduce the spec's canary (on the devices the job will
    use) or raise CanaryMismatch. `start(spec, coin)` starts the canary's job on those devices
    (a worker's warm process, say); by default a fresh child.

    Returns the canary's result, or None when the spec carries no canary.
    """
    if spec.canary is None:
        return None
    canary, coin = canary_spec(spec, spec.canary.hparams), bytes.fromhex(spec.canary.coin[2:])
    result = (start(canary, coin).result() if start is not None else
              run_job(canary, coin, devices=devices, job_folders=job_folders))
    if "0x" + result.digest.hex() != spec.canary.digest:
        raise CanaryMismatch(f"canary gave 0x{result.digest.hex()} here, the spec expects "
                             f"{spec.canary.digest}: this machine does not reproduce the "
                             "requester's run; do not commit")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crowdml_compute.runner",
                                     description="Run a crowdml job spec with a coin.")
    parser.add_argument("--spec", required=True, help="job spec JSON file")
    parser.add_argument("--coin", required=True, help="the task's coin r: 0x + 64 hex digits")
    parser.add_argument("--out", type=Path, help="folder for result.bin and result.json")
    parser.add_argument("--jobs-folder", type=Path, action="append", default=[],
                        help="a folder of job files to search besides the shipped jobs "
                             "(the job is found by its keccak256; repeatable)")
    parser.add_argument("--devices", type=int, default=1,
                        help="devices to run on (virtual ones on CPU); the digest does not "
                             "depend on it")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="run with other processes (hosts) as one job: process 0's address; "
                             "needs --processes and --process-id")
    parser.add_argument("--processes", type=int, help="how many processes run the job together")
    parser.add_argument("--process-id", type=int, help="this process's place, 0 … processes - 1")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction,
                        default=sys.stderr.isatty(), help="progress bar on stderr")
    args = parser.parse_args(argv)
    try:
        from .keys import coin_from_hex
        from .profile import apply_environment

        spec = load_spec(args.spec)
        try:
            coin = coin_from_hex(args.coin)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        if args.devices < 1:
            raise SpecError(f"--devices must be at least 1, not {args.devices}")
        group_args = (args.coordinator, args.processes, args.process_id)
        if any(arg is not None for arg in group_args) and None in group_args:
            raise SpecError("--coordinator, --processes and --process-id go together")
        host, _, port = (args.coordinator or "").rpartition(":")
        if args.coordinator is not None and not (host and port.isdigit()):
            raise SpecError(f"--coordinator {args.coordinator!r} is not HOST:PORT")
        apply_environment(spec.profile, args.devices)
        result = execute(spec, coin, devices=args.devices, progress=args.progress,
                         job_folders=args.jobs_folder,
                         group=group_args if args.coordinator is not None else None)
    except CrowdmlError as exc:
        print(f"crowdml: {exc}", file=sys.stderr)
        if args.out is not None:
            write_outcome(args.out, error=exc)
        return EXIT_BAD_INPUT
    if args.out is not None:
        write_outcome(args.out, result=result)
    print("0x" + result.digest.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
