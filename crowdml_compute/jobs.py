"""A worker's job registry: the job files it may run, found by the keccak256 of their source.

A spec names its job by digest (`job_digest`); the `job` field is only a label. A worker looks
the digest up among the jobs shipped with the package (`crowdml_jobs`, the repository's `jobs/`
folder) and the folders it configures (`crowdml: jobs_folder:`), never at a path the requester
wrote: the spec is then valid wherever it is read, and nothing outside these folders can run.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

from .digest import keccak_digest
from .errors import SpecError

SHIPPED_PACKAGE = "crowdml_jobs"


def shipped_folder() -> Path:
    """Where the shipped jobs are: the installed `crowdml_jobs` package, or in a source checkout
    (where `jobs/` is not importable under that name) the `jobs/` folder beside the plugin."""
    found = importlib.util.find_spec(SHIPPED_PACKAGE)
    if found is not None and found.submodule_search_locations:
        return Path(list(found.submodule_search_locations)[0])
    return Path(__file__).resolve().parents[1] / "jobs"


def job_files(folder: Path) -> list[Path]:
    """The job files of a folder: its .py files except private ones such as __init__.py."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def configured_job_folders() -> list[Path]:
    """`crowdml: jobs_folder:` of the active ape project (read by the parent process only: a
    job's child process reads no config and is handed the folders)."""
    from .host import settings

    return list(settings().jobs_folder)


class JobRegistry:
    """The shipped jobs plus `folders`, indexed by 0x-keccak256 of their bytes (a file found
    twice, e.g. the shipped folder also configured, counts once)."""

    def __init__(self, folders: Iterable[str | Path] = ()):
        self.folders = [shipped_folder()] + [Path(f).expanduser() for f in folders]
        self.by_digest: dict[str, Path] = {}
        for folder in self.folders:
            for path in job_files(folder):
                self.by_digest.setdefault("0x" + keccak_digest(path.read_bytes()).hex(), path)

    def __repr__(self) -> str:
        return f"JobRegistry({', '.join(map(str, self.folders))})"

    def where(self) -> str:
        """The folders, each once (the shipped folder may also be configured)."""
        return ", ".join(dict.fromkeys(str(f.resolve()) for f in self.folders))

    def names(self) -> list[str]:
        """The job names this registry holds, as `make-spec` takes them."""
        return sorted({path.stem for folder in self.folders for path in job_files(folder)})

    def find(self, digest: str, label: str = "") -> Path:
        """The job file whose keccak256 is `digest`; SpecError if this worker has none."""
        path = self.by_digest.get(digest.lower())
        if path is None:
            named = f" ({label})" if label else ""
            raise SpecError(f"no job file with keccak256 {digest}{named} among this worker's jobs "
                            f"({self.where()}); add the requester's job file to a folder listed "
                            "in crowdml.jobs_folder")
        return path

    def named(self, name: str) -> Path:
        """A job by file name, with or without `.py` (`train_classifier`); the first folder
        holding it wins, the shipped jobs first."""
        filename = name if name.endswith(".py") else f"{name}.py"
        for folder in self.folders:
            if (folder / filename).is_file() and not filename.startswith("_"):
                return folder / filename
        raise SpecError(f"no job named {name}; the jobs are {', '.join(self.names())} "
                        f"(in {self.where()})")


def resolve_job(job: str | Path, folders: Iterable[str | Path] = ()) -> Path:
    """Requester side: `job` is a job file's path, or the name of a shipped or configured job
    (`train_classifier`). SpecError if neither."""
    path = Path(job).expanduser()
    if path.is_file():
        return path
    if len(path.parts) > 1 or path.suffix not in ("", ".py"):
        raise SpecError(f"job file {job} does not exist")
    return JobRegistry(folders).named(str(job))


# ---------------------------------------------------------------- loading a job


def load_job_file(path: str | Path,
                  expected_digest: str | None = None) -> tuple[types.ModuleType, str]:
    """Import a job file by path; returns the module and the 0x-keccak256 of its bytes.

    With `expected_digest`, a file with another digest is refused before any of it runs; the
    checked bytes are the ones executed, so the file cannot change in between.
    """
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read job file {path}: {exc.strerror}") from None
    digest = "0x" + keccak_digest(source).hex()
    if expected_digest is not None and digest != expected_digest:
        raise SpecError(f"job file {path} has keccak256 {digest}, the spec expects "
                        f"{expected_digest}; get the requester's job file")
    name = f"crowdml_job_{path.stem}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # pydantic resolves a job's annotations through sys.modules
    exec(compile(source, str(path), "exec"), module.__dict__)
    if not callable(getattr(module, "run", None)):
        raise SpecError(f"job file {path} defines no run(hparams, data, keys, report)")
    return module, digest


def load_job(spec: JobSpec, job_folders: Sequence[str | Path] = ()) -> types.ModuleType:
    """Import the spec's job: the file with the spec's keccak256 among the shipped jobs and
    `job_folders` (never the path the requester wrote, which is a label)."""
    path = JobRegistry(job_folders).find(spec.job_digest, spec.job)
    return load_job_file(path, spec.job_digest)[0]


def _hparams_error(job: str | Path, exc) -> SpecError:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return SpecError(f"hparams for {job}: {where + ': ' if where else ''}{message}")


def normalise_hparams(job: types.ModuleType, hparams: dict) -> dict:
    """The hyperparameters as the job's `Config` reads them, in JSON form: types coerced,
    defaults filled, None values dropped. SpecError names the first bad field."""
    from pydantic import ValidationError

    config_model = getattr(job, "Config", None)
    if config_model is None:
        return dict(hparams)
    try:
        config = config_model.model_validate(hparams)
    except ValidationError as exc:
        raise _hparams_error(job.__file__, exc) from None
    return config.model_dump(mode="json", exclude_none=True)


def read_job_config(path: Path, hparams: dict, canary: dict | str | None = None) -> dict:
    """Import the job file at `path` here (its jax and flax with it) and read its `Config`: the
    file's 0x-keccak256, `hparams` as the Config stores them and, with `canary` (overrides, or
    "default" for the job's own `canary(config)`, none without one), the canary's overrides as
    the Config reads them merged with `hparams`."""
    module, digest = load_job_file(path)
    answer = {"digest": digest, "hparams": normalise_hparams(module, hparams), "canary": None}
    if canary is not None:
        overrides = canary
        if canary == "default":
            choose = getattr(module, "canary", None)
            overrides = ({} if choose is None else
                         choose(module.Config.model_validate(answer["hparams"])))
        merged = normalise_hparams(module, {**answer["hparams"], **overrides})
        answer["canary"] = {name: merged.get(name) for name in overrides}
    return answer
