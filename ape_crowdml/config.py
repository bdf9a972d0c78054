"""The `crowdml:` section of ape-config.yaml. Every default works untouched on a local chain;
any field can be overridden by an `APE_CROWDML_<FIELD>` environment variable.

    crowdml:
      boards:                      # board address per network, nested as ape's deployments:
        ethereum:
          sepolia: "0x…"           # a fork (sepolia-fork) uses its upstream's board unless named
      jobs_folder: [jobs]          # folders of job files besides the shipped ones (one path or a list)
      data_folder: data            # datasets the requester publishes
      state_folder: .crowdml       # sqlite store of salts, coin openings and results
      artifact_store: null         # fsspec URL; default: <state_folder>/artifacts
      allow_local_uris: null       # local paths in specs and announcements; null: only on ethereum:local:test
      cache_folder: ~/.cache/crowdml   # remote datasets, kept under their digest
      job_env_folder: ~/.cache/crowdml/job-envs   # where `ape crowdml job-env create` builds
      job_envs: {}                 # job stack -> its python, for one built elsewhere
      worker:
        accept_jobs: []            # job names or keccak256 digests; [] = shipped jobs and jobs_folder
        max_deposit: 1000000000000000000   # wei
        min_reward: 1                      # wei per worker: reward // workers
        accept_profiles: []        # environment profiles accepted besides the built-in ones
        accept_sinks: ["0x000000000000000000000000000000000000dEaD"]  # forfeit sinks (default: burn)
        max_window_blocks: 50400           # longest join, commit or reveal window (a week of 12 s blocks)
        devices: 1                 # devices a job may use (virtual CPU ones or GPUs); not in the digest
        warm_jobs: false           # warm job processes (canaries too) instead of a fresh one per job
        result_store: null         # fsspec URL this worker uploads agreed results to (its own)
        result_url: null           # where others read those objects (default: result_store)
        result_store_options: {}   # fsspec options for result_store, e.g. {profile: crowdml}
      agent:
        page_blocks: 2000          # blocks per eth_getLogs query (providers cap the range)
        max_fee: null              # wei per gas, in all, for its transactions; null: ape's default
        priority_fee: null         # wei per gas to the block's proposer; null: ape's default
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ape.api.config import PluginConfig
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import SettingsConfigDict

from crowdml_compute.profile import Profile
from .board import NEUTRAL_SINK

# Ape's name for a local fork of a network: mainnet-fork forks mainnet.
FORK_SUFFIX = "-fork"


class WorkerPolicy(BaseModel):
    """What a worker accepts; checked before any deposit leaves the account."""

    accept_jobs: list[str] = Field(default_factory=list)
    max_deposit: int = Field(10**18, ge=0)
    min_reward: int = Field(1, ge=0)
    # Whole profiles, field for field: a spec's profile must equal a built-in one or one of these.
    accept_profiles: list[Profile] = Field(default_factory=list)
    # A sink someone controls pays them the forfeits: a requester holding it would profit from
    # sabotaging its own task. By default only the burn address is accepted.
    accept_sinks: list[str] = Field(default_factory=lambda: [NEUTRAL_SINK])
    # The board allows windows of up to 2**24 - 1 blocks, years of locked deposit.
    max_window_blocks: int = Field(50_400, ge=1)
    # A commit or reveal window shorter than this (a 1-block commit window leaves no time to
    # train) is refused: the worker would forfeit its deposit for the publisher's choice.
    min_window_blocks: int = Field(3, ge=1)
    # Devices a job may run on: virtual CPU devices (up to cpu-exact's 8) or GPUs. A job uses
    # the largest divisor of its micro_batches within this; its digest does not depend on it.
    devices: int = Field(1, ge=1)
    # Run jobs (and canaries) in warm processes, shared by the process's workers (jax imported
    # and the environment sealed once each), rather than a fresh one each: the same digests,
    # without ~10 s of start-up per job.
    warm_jobs: bool = False
    # Every read of a URI a task's publisher names (its data, its spec, a model to evaluate)
    # stops at this many bytes and this many seconds, so that no task can fill this machine
    # or hold the agent: a refusal is one line, and the task is not joined.
    max_data_bytes: int = Field(4 << 30, ge=1)
    fetch_seconds: float = Field(600.0, gt=0)
    # The agent's checks before a join (spec, data, environment, canary) run off its loop; a
    # task whose checks take longer than this is refused and not checked again.
    check_seconds: float = Field(1800.0, gt=0)
    # Where this worker delivers an agreed result (ape_crowdml/delivery.py): a store of its own
    # that it writes with its own credentials (fsspec options below, e.g. an AWS profile or an
    # endpoint_url), and the URL prefix at which others read the same objects (a bucket's
    # public-read address; default: the store's URL itself). Unset: the state folder's
    # artifact store, which only a requester on this machine can read.
    result_store: str | None = None
    result_url: str | None = None
    result_store_options: dict[str, Any] = Field(default_factory=dict)


class AgentSettings(BaseModel):
    """How `ape crowdml agent` (and `Agent`) talks to a live network; its options override."""

    # Many providers answer eth_getLogs over at most a few thousand blocks (some 500).
    page_blocks: int = Field(2_000, ge=1)
    max_fee: int | None = Field(None, ge=1)  # wei per gas
    priority_fee: int | None = Field(None, ge=0)


class CrowdmlConfig(PluginConfig):
    boards: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Job files are found by digest among the shipped jobs and these folders (missing ones skip).
    jobs_folder: list[Path] = Field(default_factory=lambda: [Path("jobs")])
    data_folder: Path = Path("data")
    state_folder: Path = Path(".crowdml")
    artifact_store: str | None = None
    # Local paths (and file:// URIs) where a remote party's words go: a spec's data or spec
    # URI at publish, at a worker's checks, an announced result. None: allowed on ape's
    # embedded test chain only (one machine by construction); True: every party shares one disk.
    allow_local_uris: bool | None = None
    cache_folder: Path = Path("~/.cache/crowdml")
    # Job environments (crowdml_compute/jobenv.py): one interpreter per job stack a profile names.
    job_env_folder: Path = Path("~/.cache/crowdml/job-envs")
    job_envs: dict[str, Path] = Field(default_factory=dict)
    worker: WorkerPolicy = Field(default_factory=WorkerPolicy)
    agent: AgentSettings = Field(default_factory=AgentSettings)

    model_config = SettingsConfigDict(extra="allow", env_prefix="APE_CROWDML_")

    @field_validator("jobs_folder", mode="before")
    @classmethod
    def _one_or_many(cls, folders):
        return [folders] if isinstance(folders, (str, Path)) else folders

    @field_validator("boards", mode="before")
    @classmethod
    def _nested_as_deployments(cls, boards):
        """The layout before this one keyed boards by "ecosystem:network": say how to move."""
        for key, value in (boards or {}).items():
            if ":" in str(key) or not isinstance(value, dict):
                ecosystem, _, network = str(key).partition(":")
                raise ValueError(
                    f"boards are nested by ecosystem then network, as ape's deployments: "
                    f"write `boards: {{{ecosystem}: {{{network or 'NETWORK'}: \"{value}\"}}}}` "
                    f"instead of `{key}: {value}`")
        return boards

    def board_for(self, ecosystem: str, network: str) -> str | None:
        """The configured board of a network, if any. A fork (ape names it `<upstream>-fork`)
        holds the upstream's contracts, so it takes the upstream's board unless it names one."""
        boards = self.boards.get(ecosystem, {})
        if network in boards or not network.endswith(FORK_SUFFIX):
            return boards.get(network)
        return boards.get(network.removesuffix(FORK_SUFFIX))

    def local_uris_allowed(self) -> bool:
        """Whether paths on this machine may stand where a remote party's URI goes (a spec's
        data and spec URIs, an announced result): `allow_local_uris`, or by default only on
        ape's embedded test chain, which lives in one process and so on one machine."""
        if self.allow_local_uris is not None:
            return self.allow_local_uris
        from ape import networks

        provider = networks.provider
        return provider.network.name == "local" and provider.name == "test"

    def artifact_url(self) -> str:
        return self.artifact_store or str(self.state_folder / "artifacts")


def crowdml_config() -> CrowdmlConfig:
    """The active project's `crowdml:` section, with relative folders resolved against the
    project root (ape runs commands from anywhere inside a project)."""
    from ape.utils.basemodel import ManagerAccessMixin

    project = ManagerAccessMixin.local_project
    config = project.config.get_config("crowdml")
    root = project.path

    def resolve(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else root / path

    return config.model_copy(update={
        "jobs_folder": [resolve(folder) for folder in config.jobs_folder],
        "data_folder": resolve(config.data_folder),
        "state_folder": resolve(config.state_folder),
        "cache_folder": resolve(config.cache_folder),
        "job_env_folder": resolve(config.job_env_folder),
        "job_envs": {stack: resolve(python) for stack, python in config.job_envs.items()},
    })
