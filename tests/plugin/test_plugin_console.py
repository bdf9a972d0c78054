"""`ape console` loads the crowdml API through the extension listed in ape-config.yaml."""

import re

from ape_crowdml.console import NAMES, load_ipython_extension


class Shell:
    def __init__(self):
        self.user_ns = {}

    def push(self, names):
        self.user_ns.update(names)


def test_extension_is_enabled_in_ape_config(project):
    assert "ape_crowdml.console" in project.config.console.plugins


def test_extension_pushes_the_api(accounts, project, tmp_path):
    shell = Shell()
    load_ipython_extension(shell)
    assert set(shell.user_ns) == set(NAMES)
    with project.temp_config(crowdml={"state_folder": str(tmp_path)}):
        board = shell.user_ns["deploy_board"](accounts[0])
        assert shell.user_ns["find_board"]().address == board.address


def test_public_api_is_importable_from_the_package_lazily():
    import subprocess
    import sys

    probe = ("import sys, ape_crowdml; heavy = {'ape_crowdml.parties', 'jax'} & set(sys.modules); "
             "assert not heavy, heavy; from ape_crowdml import Board, Requester, Worker, Agent, "
             "find_board, deploy_board; assert Worker.__module__ == 'ape_crowdml.parties'; "
             "assert 'ape_crowdml.parties' in sys.modules and 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_unknown_name_is_an_attribute_error():
    import pytest

    import ape_crowdml

    with pytest.raises(AttributeError, match="no attribute 'Wroker'"):
        ape_crowdml.Wroker


def test_extension_pushes_the_purchase_api(accounts, project, tmp_path):
    shell = Shell()
    load_ipython_extension(shell)
    with project.temp_config(crowdml={"state_folder": str(tmp_path)}):
        board = shell.user_ns["deploy_board"](accounts[0], accounts[9].address)
        market = shell.user_ns["deploy_market"](accounts[0], board)
        assert shell.user_ns["find_market"]().address == market.address
        assert market.board.address == board.address
        assert repr(shell.user_ns["Buyer"](market, accounts[0])).startswith("<Buyer ")


def test_crowdml_errors_are_one_line_and_ape_errors_still_reach_apes_handler(capsys):
    """In IPython (as `ape console` runs it, ape's own extension loaded first), a crowdml
    error prints one ERROR line instead of a traceback; an ape error still goes to ape's."""
    from IPython.core.interactiveshell import InteractiveShell
    from ape.exceptions import ApeException

    from ape_crowdml.errors import SpecError

    shell = InteractiveShell.instance()
    seen = []
    shell.set_custom_exc((ApeException,), lambda self, etype, value, tb, tb_offset=None:
                         seen.append(value))
    try:
        load_ipython_extension(shell)
        shell.push({"SpecError": SpecError, "ApeException": ApeException})
        shell.run_cell("raise SpecError('no such job')")
        shell.run_cell("raise ApeException('from ape')")
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err
        assert re.search(r"ERROR: +\(SpecError\) no such job", out.out + out.err)
        assert [str(error) for error in seen] == ["from ape"]
    finally:
        InteractiveShell.clear_instance()
