"""The `crowdml:` config section: boards nested as ape's deployments, the data cache folder."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from ape_crowdml.config import CrowdmlConfig, crowdml_config
from crowdml_compute.data import cache_folder

BURN = "0x000000000000000000000000000000000000dEaD"


def crowdml_fields(project, networks, **fields):
    """The `state` fixture's overrides and `fields`: temp_config replaces them, not adds."""
    overrides = {"crowdml": {"state_folder": str(crowdml_config().state_folder), **fields}}
    if networks.provider.name == "foundry":
        overrides["foundry"] = {"host": networks.provider.uri}
    return project.temp_config(**overrides)


def test_boards_are_nested_by_ecosystem_then_network():
    config = CrowdmlConfig.model_validate({"boards": {"ethereum": {"sepolia": BURN}}})
    assert config.board_for("ethereum", "sepolia") == BURN
    assert config.board_for("ethereum", "mainnet") is None
    assert config.board_for("arbitrum", "sepolia") is None


def test_a_fork_uses_its_upstreams_board_unless_it_names_its_own():
    upstream, own = BURN, "0x" + "11" * 20
    config = CrowdmlConfig.model_validate({"boards": {"ethereum": {"sepolia": upstream}}})
    assert config.board_for("ethereum", "sepolia-fork") == upstream
    assert config.board_for("ethereum", "mainnet-fork") is None  # another upstream's fork
    assert config.board_for("ethereum", "sepolia-forked") is None  # not ape's fork name
    named = CrowdmlConfig.model_validate(
        {"boards": {"ethereum": {"sepolia": upstream, "sepolia-fork": own}}})
    assert named.board_for("ethereum", "sepolia-fork") == own
    assert named.board_for("ethereum", "sepolia") == upstream


def test_the_old_flat_key_says_how_to_nest_it():
    with pytest.raises(ValidationError) as refused:
        CrowdmlConfig.model_validate({"boards": {"ethereum:sepolia": BURN}})
    assert f'write `boards: {{ethereum: {{sepolia: "{BURN}"}}}}`' in str(refused.value)


def test_the_configured_board_is_the_one_commands_use(ape, project, networks):
    """Two boards deployed from here: by default commands use the last; the config names the
    first for this network."""
    first, last = (re.search(r"board (0x\w{40})", ape("deploy", "--sink", BURN, account=0))
                   .group(1) for _ in range(2))
    assert last in ape("list")
    ecosystem, network = networks.provider.network.ecosystem.name, networks.provider.network.name
    with crowdml_fields(project, networks, boards={ecosystem: {network: first}}):
        listing = ape("list")
    assert first in listing and last not in listing


def test_a_configured_board_that_is_not_an_address_is_one_line(ape, project, networks):
    ecosystem, network = networks.provider.network.ecosystem.name, networks.provider.network.name
    with crowdml_fields(project, networks, boards={ecosystem: {network: "nonsense"}}):
        output = ape("list", expect=1)
    assert re.fullmatch(r"ERROR: +the board 'nonsense' is not an address\n", output)


def test_the_data_cache_folder_is_a_config_field(project, tmp_path, monkeypatch):
    monkeypatch.delenv("APE_CROWDML_CACHE_FOLDER", raising=False)
    assert crowdml_config().cache_folder == Path.home() / ".cache" / "crowdml"
    with project.temp_config(crowdml={"cache_folder": "cache"}):  # relative: to the project
        assert cache_folder() == project.path / "cache" / "by-digest"
    with project.temp_config(crowdml={"cache_folder": str(tmp_path)}):
        assert cache_folder() == tmp_path / "by-digest"


def test_a_board_named_by_address_scans_events_from_its_creation(networks, accounts, chain):
    """A board from the config or --board: the deployment block is read from the board itself
    (CREATED_AT), on any node. The same address redeployed after a revert (as between tests)
    reads its new block."""
    from ape_crowdml.board import Board

    snapshot = chain.snapshot()
    first = Board.deploy(accounts[0], BURN)
    assert Board(first.address).start_block == first.start_block > 0
    chain.restore(snapshot)
    chain.mine(5)
    again = Board.deploy(accounts[0], BURN)
    assert again.address == first.address
    assert again.start_block == chain.blocks.head.number == first.start_block + 5  # its receipt
    assert Board(again.address).start_block == again.start_block
