"""crowdml: outsource randomized ML jobs to n paid workers through a public blockchain.

This module only registers the plugin with ape; everything heavy is imported inside the hook so
that `ape --help` stays fast. The CLI is registered through the `ape_cli_subcommands` entry point
in pyproject.toml.
"""

from ape import plugins


@plugins.register(plugins.Config)
def config_class():
    from ape_crowdml.config import CrowdmlConfig

    return CrowdmlConfig
