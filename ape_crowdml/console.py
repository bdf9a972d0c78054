"""IPython extension for `ape console`: puts the crowdml API in the namespace.

Enable it in ape-config.yaml:

    console:
      plugins:
        - ape_crowdml.console

or in a running console: `%load_ext ape_crowdml.console`.
"""

NAMES = ("Agent", "Board", "Phase", "Requester", "Worker", "WorkerStatus", "deploy_board",
         "find_board", "load_spec", "make_spec",
         "Buyer", "Market", "Seller", "Stage", "deploy_market", "find_market")


def crowdml_namespace() -> dict:
    from .agent import Agent
    from .board import Board, Phase, WorkerStatus
    from .parties import Requester, Worker, deploy_board, find_board
    from .purchase import Buyer, Market, Seller, Stage, deploy_market, find_market
    from .spec import load_spec, make_spec

    namespace = locals()
    return {name: namespace[name] for name in NAMES}


def load_ipython_extension(ipython) -> None:
    ipython.push(crowdml_namespace())
