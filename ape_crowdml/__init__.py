"""crowdml: outsource randomized ML jobs to n paid workers through a public blockchain.

The public API is importable from here (`from ape_crowdml import Board, Requester, Worker`), but
lazily: each name is imported on first use, so that registering the plugin (which ape does at
every start) loads no web3 contract and `ape --help` stays fast. The plugin has no jax at all:
what needs a job's code runs in a job environment (crowdml_compute/child.py); a delivered model
is used there too (`from crowdml_compute.model import load_model`). The CLI is
registered through the `ape_cli_subcommands` entry point in pyproject.toml.
"""

import warnings
from importlib import import_module
from importlib.util import find_spec

# ape-vyper's config declares `import_remapping` with a forward reference that pydantic-settings
# warns about whenever ape builds its config: on every `ape crowdml …` start, a line the user can
# do nothing about. Plugins load before any config is built, so the filter is in place in time.
warnings.filterwarnings("ignore", message="Field 'import_remapping'", category=UserWarning)

# name -> the module that defines it
_API = {
    "Agent": "agent",
    "Board": "board",
    "Phase": "board",
    "WorkerStatus": "board",
    "Requester": "parties",
    "Worker": "parties",
    "deploy_board": "parties",
    "find_board": "parties",
    "load_spec": "crowdml_compute.spec",
    "make_spec": "crowdml_compute.spec",
    "CrowdmlConfig": "config",
    "CrowdmlError": "errors",
    "Buyer": "purchase",
    "Market": "purchase",
    "Seller": "purchase",
    "Stage": "purchase",
    "deploy_market": "purchase",
    "find_market": "purchase",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module 'ape_crowdml' has no attribute {name!r}") from None
    value = getattr(import_module(module if "." in module else f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


def _host_settings():
    """The compute side's settings (crowdml_compute/host.py), from the active project's config."""
    from crowdml_compute.host import HostSettings
    from ape_crowdml.config import crowdml_config

    config = crowdml_config()
    return HostSettings(cache_folder=config.cache_folder, jobs_folder=tuple(config.jobs_folder),
                        job_env_folder=config.job_env_folder, job_envs=dict(config.job_envs),
                        max_data_bytes=config.worker.max_data_bytes,
                        fetch_seconds=config.worker.fetch_seconds)


# A job's own environment (crowdml_compute/jobenv.py) holds the compute side alone, without ape: there
# this package registers nothing and hosts nothing.
if find_spec("ape") is not None:
    from ape import plugins

    from crowdml_compute import host as _host

    _host.install(_host_settings)

    @plugins.register(plugins.Config)
    def config_class():
        from ape_crowdml.config import CrowdmlConfig

        return CrowdmlConfig
