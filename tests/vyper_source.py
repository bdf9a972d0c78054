"""Compile Vyper sources the project does not ship: the test actor, and variants of the board made
by text substitution (a constant prevrandao, a lower block limit) to play attacks against."""

from __future__ import annotations

from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOARD_SOURCE = REPO / "contracts" / "TaskBoard.vy"
ACTOR_SOURCE = Path(__file__).with_name("contracts") / "Actor.vy"


@cache
def _compiled(source: str, name: str):
    from ethpm_types import ContractType
    from vyper.compiler import compile_code
    from vyper.compiler.input_bundle import FilesystemInputBundle

    # The board imports contracts/ITaskBoard.vyi: a variant is compiled where the board lives.
    out = compile_code(source, contract_path=f"{name}.vy",
                       input_bundle=FilesystemInputBundle([BOARD_SOURCE.parent]),
                       output_formats=["abi", "bytecode", "bytecode_runtime"])
    return ContractType.model_validate({
        "contractName": name, "abi": out["abi"],
        "deploymentBytecode": {"bytecode": out["bytecode"]},
        "runtimeBytecode": {"bytecode": out["bytecode_runtime"]},
    })


def container(source: str, name: str):
    """An ape ContractContainer for Vyper `source`."""
    from ape.contracts import ContractContainer

    return ContractContainer(_compiled(source, name))


def board_variant(*replacements: tuple[str, str]):
    """The TaskBoard with each (old, new) text replaced; every `old` must occur in the source,
    so that a variant cannot silently stop testing what it names."""
    source = BOARD_SOURCE.read_text()
    for old, new in replacements:
        assert old in source, f"{old!r} is not in {BOARD_SOURCE.name}"
        source = source.replace(old, new)
    return container(source, "TaskBoard")


def actor():
    """The test actor (tests/contracts/Actor.vy)."""
    return container(ACTOR_SOURCE.read_text(), "Actor")
