"""What the compute side takes from the program that hosts it, without importing that program.

In a requester's or worker's process the plugin is the host: `ape_crowdml/__init__.py` installs
its `crowdml:` config here, read again at each call (the active project may change). A job's own
process has no host and needs none: it is handed its job folders on its command line and the
cache folder in `data.CACHE_FOLDER_VARIABLE`. Without a host (a script using the compute side
alone) the defaults below hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HostSettings:
    cache_folder: Path = Path("~/.cache/crowdml")  # remote files kept under their digest
    jobs_folder: tuple[Path, ...] = ()  # job folders searched besides the shipped jobs
    job_env_folder: Path = Path("~/.cache/crowdml/job-envs")  # where jobenv.create builds
    job_envs: dict[str, Path] = field(default_factory=dict)  # stack name -> its interpreter
    # Every read of a URI a remote party names (data, spec, a model to evaluate) stops at this
    # many bytes and this many seconds (the worker's `max_data_bytes`, `fetch_seconds`).
    max_data_bytes: int = 4 << 30
    fetch_seconds: float = 600.0


_provider: Callable[[], HostSettings] | None = None


def install(provider: Callable[[], HostSettings]) -> None:
    """Make `provider` the source of the settings (the plugin installs its config)."""
    global _provider
    _provider = provider


def settings() -> HostSettings:
    return _provider() if _provider is not None else HostSettings()
