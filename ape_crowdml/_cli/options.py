"""Parameter types and options shared by `ape crowdml …` commands, in ape's CLI conventions.

A malformed value (not an address, not 32 bytes, not JSON) is click's usage error: exit status
2, one line. The checks that need the chain (is there a board at that address?) run in the
command and fail as ape errors do: one `ERROR:` line, exit status 1.
"""

from __future__ import annotations

import click
from ape.cli import JSON, account_option, skip_confirmation_option

__all__ = ["ADDRESS", "BYTES32", "JSON", "OUTPUT_FORMATS", "confirm", "output_format_option",
           "signer_option", "yes_option"]


class Address(click.ParamType):
    """An address, through ape's conversion (any form ape converts to an address; checksummed)."""

    name = "address"

    def get_metavar(self, param):
        return "ADDRESS"

    def convert(self, value, param, ctx):
        from ape import convert
        from ape.exceptions import ApeException
        from ape.types import AddressType

        try:
            return convert(value, AddressType)
        except ApeException:  # ConversionError, or a converter that needs a connection
            self.fail(f"{value!r} is not an address", param, ctx)


class Bytes32(click.ParamType):
    """32 bytes written as 0x and 64 hex digits (a digest, a coin)."""

    name = "bytes32"

    def get_metavar(self, param):
        return "BYTES32"

    def convert(self, value, param, ctx):
        if isinstance(value, bytes) and len(value) == 32:
            return value
        text = str(value)
        digits = text[2:] if text[:2].lower() == "0x" else text
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            self.fail(f"{text!r} is not hex", param, ctx)
        if len(raw) != 32:
            self.fail(f"{text!r} is {len(raw)} bytes, not 32 (0x and 64 hex digits)", param, ctx)
        return raw


ADDRESS = Address()
BYTES32 = Bytes32()

OUTPUT_FORMATS = ("table", "json", "yaml")


def output_format_option():
    return click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
                        default="table", show_default=True,
                        help="A rich table to read, or JSON / YAML for scripts (amounts in wei).")


def signer_option(prompt: bool = True):
    """ape's `--account` (it prompts for one when left out, unless `prompt` is False), with a
    help text."""

    def decorate(function):
        function = (account_option() if prompt else account_option(prompt=False))(function)
        function.__click_params__[-1].help = ("The account that signs: an alias from `ape "
                                              "accounts list`, or TEST::N for test account N.")
        return function

    return decorate


def yes_option():
    return skip_confirmation_option(help="Send without asking for confirmation.")


def confirm(question: str, skip: bool) -> None:
    """Ask before sending ether; a no (or no terminal to answer on) ends the command, exit
    status 1, with nothing sent."""
    if not skip:
        click.confirm(question, abort=True)
