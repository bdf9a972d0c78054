"""IPython extension for `ape console`: puts the crowdml API in the namespace.

Enable it in ape-config.yaml:

    console:
      plugins:
        - ape_crowdml.console

or in a running console: `%load_ext ape_crowdml.console`.
"""

import ape_crowdml

NAMES = ("Agent", "Board", "Phase", "Requester", "Worker", "WorkerStatus", "deploy_board",
         "find_board", "load_spec", "make_spec",
         "Buyer", "Market", "Seller", "Stage", "deploy_market", "find_market")


def crowdml_namespace() -> dict:
    return {name: getattr(ape_crowdml, name) for name in NAMES}


def load_ipython_extension(ipython) -> None:
    ipython.push(crowdml_namespace())
    if hasattr(ipython, "set_custom_exc"):
        one_line_errors(ipython)


def one_line_errors(ipython) -> None:
    """Show crowdml's errors as one `ERROR:` line, as ape's console shows its own. They are
    not ape exceptions (the compute side runs without ape), so ape's handler, loaded before
    this extension, does not take them: this one takes them and hands the rest to it."""
    from ape.logging import logger

    from ape_crowdml.errors import CrowdmlError

    handled = tuple(ipython.custom_exceptions)
    previous = ipython.CustomTB

    def handler(shell, etype, value, tb, tb_offset=None):
        if isinstance(value, CrowdmlError):
            logger.error(f"({etype.__name__}) {value}")
            return None
        return previous(etype, value, tb, tb_offset=tb_offset)

    ipython.set_custom_exc(handled + (CrowdmlError,), handler)
