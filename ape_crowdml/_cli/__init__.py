"""`ape crowdml …`: a thin skin over ape_crowdml.parties (tasks, job environments, the agent) and
ape_crowdml.purchase (orders). Every user mistake is one line (`ERROR: …`, exit status 1, as
ape's own commands abort), never a traceback; status 2 is click's, for a malformed command line.

    common.py   the group class (one-line errors, -v/--verbosity), amounts, the board option
    options.py  shared click types and options (addresses, digests, JSON, --account, --yes)
    tasks.py    the `cli` group: deploy, publish, join, work, …, make-spec, run-job, agent, env
    orders.py   deploy-market and the `order` group (ModelPurchase)
"""

from ape_crowdml._cli.orders import deploy_market, order
from ape_crowdml._cli.tasks import cli

cli.add_command(deploy_market)
cli.add_command(order)

__all__ = ["cli"]
