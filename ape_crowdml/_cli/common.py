"""What the `ape crowdml` command groups share: the group class that turns every CrowdmlError
into one `ERROR:` line, the amount type, the board option and the objects commands act through."""

from __future__ import annotations

import logging

import click
from ape.cli import verbosity_option
from ape.exceptions import Abort

from ape_crowdml._cli.options import ADDRESS


class _DropLines(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class CrowdmlGroup(click.Group):
    """Turns every CrowdmlError raised by a command into ape's one-line `Abort`, and gives every
    command ape's `-v/--verbosity`.

    Raised as it is, ape's root command would print the frames of the plugin's own files
    first (it shows the frames under the project folder of any ape exception)."""

    def add_command(self, cmd, name=None):
        # The option `ape_cli_context()` adds, put on each command here so that none, present or
        # future, goes without it (the commands need no context object of ape's).
        if not any(param.name == "verbosity" for param in cmd.params):
            verbosity_option()(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx):
        from ape.exceptions import ProviderError
        from ape.logging import logger

        from ape_crowdml.errors import CrowdmlError

        # ape tries public RPCs for a live network none is configured for, with a warning per
        # try (twenty where none answers): the outcome is what the user needs, in one line.
        quiet = _DropLines("not available, retrying")
        logger._logger.addFilter(quiet)
        try:
            return super().invoke(ctx)
        except ProviderError as exc:
            raise Abort(f"cannot reach a node for this network ({exc}): name one in "
                        "ape-config.yaml (e.g. `node: ethereum: sepolia: uri: https://…`) or "
                        "pick another --network") from None
        except click.BadParameter as exc:
            # A malformed value: click's usage error (status 2), as one line: the usage text
            # click would print first says nothing about the value.
            exc.ctx = None
            raise
        except CrowdmlError as exc:
            raise Abort(str(exc)) from None
        except (KeyboardInterrupt, SystemExit) as exc:
            # Ctrl-C: ape's handler turns SIGINT into SystemExit(130). The job process, in a
            # session of its own, got no signal: the runner stopped it.
            if isinstance(exc, SystemExit) and exc.code != 130:
                raise
            raise Abort("interrupted: stopped here, with any job process this command "
                        "started; a transaction already sent stays sent") from None
        finally:
            logger._logger.removeFilter(quiet)


class Wei(click.ParamType):
    """An amount: integer wei, or anything ape converts, e.g. "0.01 ether"."""

    name = "amount"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from ape import convert

        try:
            return convert(value, int)
        except Exception:  # ape raises several conversion errors; all mean the same here
            self.fail(f"{value!r} is not an amount (try 10000000000000000 or '0.01 ether')",
                      param, ctx)


WEI = Wei()


def board_option():
    return click.option("--board", "board_address", type=ADDRESS,
                        help="Task board (default: this network's under `crowdml: boards:` in "
                             "ape-config.yaml, or the last one deployed from here on this chain).")


def _board(board_address):
    from ape_crowdml.parties import find_board

    return find_board(board_address)


def _requester(board_address, account):
    from ape_crowdml.parties import Requester

    return Requester(_board(board_address), account)


def _worker(board_address, account):
    from ape_crowdml.parties import Worker

    return Worker(_board(board_address), account)


def _echo_table(table) -> None:
    from rich.console import Console

    Console(width=140).print(table)


def _echo(output_format: str, table, data) -> None:
    """The rich table, or the same facts as JSON or YAML for a script."""
    import json

    if output_format == "table":
        _echo_table(table())
    elif output_format == "json":
        click.echo(json.dumps(data(), indent=2))
    else:
        import yaml

        # Through JSON: ape's values (an address, a currency amount) are str and int
        # subclasses, which yaml's safe dumper refuses.
        click.echo(yaml.safe_dump(json.loads(json.dumps(data())), sort_keys=False), nl=False)
