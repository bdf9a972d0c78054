"""The job spec: everything a worker needs to reproduce a result, and the digest that goes on chain.

`JobSpec.digest()` is keccak256 of `canonical_json()` (sorted keys, no whitespace, UTF-8). That is
the task's `spec` bytes32; a worker who recomputes it from the spec file it was given knows it runs
the job the requester published.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from .digest import file_digest, keccak_digest
from .errors import SpecError
from .profile import Profile, get_profile


def _bytes32_hex(value: str) -> str:
    if not (value.startswith("0x") and len(value) == 66):
        raise ValueError("must be 0x followed by 64 hex digits")
    int(value[2:], 16)
    return value.lower()


Bytes32Hex = Annotated[str, AfterValidator(_bytes32_hex)]


def _finite(value: Any) -> Any:
    """Refuse NaN and infinities anywhere in a JSON-like value: JSON has no way to write them
    (pydantic would write null)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    for item in value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else ()):
        _finite(item)
    return value


FiniteJson = Annotated[dict[str, Any], AfterValidator(_finite)]


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(item) for item in value)
    return isinstance(value, bool)


def _admits_bool(annotation: Any) -> bool:
    return annotation is bool or any(_admits_bool(arg) for arg in typing.get_args(annotation))


class HParams(BaseModel):
    """Base of a job's `Config`: frozen, unknown fields refused, finite numbers only, and no
    booleans where numbers go (pydantic would read true as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_as_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is not None and _holds_bool(value) and not _admits_bool(field.annotation):
                    raise ValueError(f"{name}: {value!r} is a boolean, not a number")
        return data


class Canary(BaseModel):
    """A tiny fixed run whose digest the requester publishes; workers reproduce it first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coin: Bytes32Hex
    hparams: FiniteJson = {}  # overrides of the spec's hyperparameters, e.g. fewer steps
    digest: Bytes32Hex


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str  # a label: the job file's name. Workers find the job by its digest (crowdml_compute/jobs.py)
    job_digest: Bytes32Hex  # keccak256 of the job file's bytes
    hparams: FiniteJson  # as the job's Config normalises them (see make_spec)
    data_uri: str  # where workers get the .npz dataset: a local path, file:// or any fsspec URL
    data_digest: Bytes32Hex  # keccak256 of the dataset file's bytes
    profile: Profile
    canary: Canary | None = None
    store: str | None = None  # the requester's store, where it uploads the spec; not used by jobs
    # The requester's X25519 public key: workers seal the agreed result to it before uploading
    # (ape_crowdml/delivery.py). None: the result is uploaded in the clear.
    result_key: Bytes32Hex | None = None

    def canonical_json(self) -> bytes:
        fields = self.model_dump(mode="json")
        if fields["result_key"] is None:
            del fields["result_key"]  # specs written before the field keep their digests
        return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()

    def digest(self) -> bytes:
        return keccak_digest(self.canonical_json())


def check_arithmetic(spec: JobSpec) -> None:
    """A profile requiring exact arithmetic runs only specs whose job computes exactly: its pins
    leave float sums free to change bits between workers, which would cost them half their
    deposits. SpecError otherwise."""
    arithmetic = spec.hparams.get("arithmetic")
    if spec.profile.requires_exact and arithmetic != "exact":
        raise SpecError(f"profile {spec.profile.name} runs only jobs with exact arithmetic "
                        f"(hparams arithmetic: exact); this spec's is {arithmetic or 'unset'}")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "spec"
    return f"{where}: {error['msg']}"


def parse_spec(text: str | bytes, source: str = "spec") -> JobSpec:
    try:
        return JobSpec.model_validate_json(text)
    except ValidationError as exc:
        raise SpecError(f"{source} is not a valid job spec: {_first_error(exc)}") from None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a spec file; SpecError with a one-line reason otherwise."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror}") from None
    return parse_spec(text, str(path))


def save_spec(spec: JobSpec, path: str | Path) -> Path:
    """Write the canonical JSON, so the file's bytes are the ones the on-chain digest covers."""
    Path(path).write_bytes(spec.canonical_json())
    return Path(path)


def make_spec(
    job: str | Path,
    data_path: str | Path,
    hparams: dict[str, Any],
    *,
    profile: str | Profile | None = None,
    canary: Canary | None = None,
    store: str | None = None,
    data_uri: str | None = None,
    result_key: str | None = None,
    job_folders: Sequence[str | Path] = (),
) -> JobSpec:
    """Build a spec, computing the job-source and data digests from the files.

    `job` is a job file's path or the name of a shipped job (or one in `job_folders`), such as
    `train_classifier`; the spec records the file's name as a label and its keccak256.
    `profile` defaults to `cpu-portable` for a job computing with exact arithmetic (the
    shipped jobs, unless told `arithmetic: float`), else to the pinned `cpu-exact`.

    The hyperparameters are stored as the job's `Config` normalises them (so `2`, `2.0` and `"2"`
    give one spec), read in a job environment (`child.job_config`). `data_uri` is where workers fetch the data
    (e.g. https://… or s3://…); the digest is computed from the local copy `data_path`, which
    defaults to being that location too. `result_key` (0x + 64 hex digits) is the X25519
    public key workers seal the agreed result to.
    """
    from .child import job_config
    from .jobs import resolve_job
    from .profile import DEFAULT_FLOAT_PROFILE, DEFAULT_PROFILE

    job = resolve_job(job, job_folders)
    if not Path(data_path).is_file():
        raise SpecError(f"data file {data_path} does not exist")
    try:
        _finite(hparams)
    except ValueError as exc:
        raise SpecError(f"hparams: {exc}") from None
    if isinstance(profile, str):
        profile = get_profile(profile)
    # The job's own Config reads the hyperparameters, in a job environment (the job imports jax).
    config = job_config(profile or get_profile(DEFAULT_PROFILE), job, hparams)
    job_digest, hparams = config["digest"], config["hparams"]
    if profile is None:
        # exact arithmetic needs no pinned machine; a job without it keeps the pinned profile
        profile = get_profile(DEFAULT_PROFILE if hparams.get("arithmetic") == "exact"
                              else DEFAULT_FLOAT_PROFILE)
    spec = JobSpec(
        job=job.name,
        job_digest=job_digest,
        hparams=hparams,
        data_uri=data_uri or str(data_path),
        data_digest="0x" + file_digest(data_path).hex(),
        profile=profile,
        canary=canary,
        store=store,
        result_key=result_key,
    )
    check_arithmetic(spec)
    return spec
