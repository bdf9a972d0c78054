"""`ape console` loads the crowdml API through the extension listed in ape-config.yaml."""

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
