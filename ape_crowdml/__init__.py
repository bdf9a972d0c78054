"""crowdml: outsource randomized ML jobs to n paid workers through a public blockchain.

This module only registers the plugin with ape; everything heavy is imported inside the hook so
that `ape --help` stays fast. The CLI is registered through the `ape_cli_subcommands` entry point
in pyproject.toml.
"""

import warnings

from ape import plugins

# ape-vyper's config declares `import_remapping` with a forward reference that pydantic-settings
# warns about whenever ape builds its config: on every `ape crowdml …` start, a line the user can
# do nothing about. Plugins load before any config is built, so the filter is in place in time.
warnings.filterwarnings("ignore", message="Field 'import_remapping'", category=UserWarning)


@plugins.register(plugins.Config)
def config_class():
    from ape_crowdml.config import CrowdmlConfig

    return CrowdmlConfig
