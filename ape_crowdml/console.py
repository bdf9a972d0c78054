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
