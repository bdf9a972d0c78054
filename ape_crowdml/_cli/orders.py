"""`ape crowdml deploy-market` and `ape crowdml order …`: buying a model only if it is good
enough (ModelPurchase), a thin skin over ape_crowdml.purchase. Added to the `cli` group by
ape_crowdml/_cli/__init__.py; every user mistake is one `ERROR: …` line (exit status 1)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path

import click
from ape.cli import ConnectedProviderCommand, network_option

from ape_crowdml._cli.common import WEI, CrowdmlGroup, _board, _echo, board_option
from ape_crowdml._cli.options import confirm, output_format_option, signer_option, yes_option

order_argument = click.argument("order_id", metavar="ORDER", type=click.IntRange(min=1))


class Percent(click.ParamType):
    """A precision bar in percent, e.g. 90 or 92.5, kept exact as basis points."""

    name = "percent"

    def convert(self, value, param, ctx):
        try:
            bps = Decimal(str(value).removesuffix("%")) * 100
        except InvalidOperation:
            bps = Decimal("NaN")
        if not bps.is_finite() or bps != bps.to_integral_value() or not 0 < bps <= 10_000:
            self.fail(f"{value!r} is not a bar between 0.01 and 100 (percent, two decimals at "
                      "most)", param, ctx)
        return int(bps)


def market_option():
    return click.option("--market", "market_address", metavar="ADDRESS",
                        help="ModelPurchase contract (default: the last one deployed from here "
                             "on this chain).")


def _market(market_address):
    from ape_crowdml.purchase import find_market

    return find_market(market_address)


@click.group(cls=CrowdmlGroup)
def order():
    """Buy a model only if its precision on your test data reaches a bar (ModelPurchase)."""


def market_command(*, account: bool = True, name: str | None = None):
    """An `order` subcommand on a network, a market and usually an account."""

    def decorate(function):
        function = market_option()(function)
        if account:
            function = signer_option()(function)
        function = network_option()(function)
        return order.command(name, cls=ConnectedProviderCommand)(function)

    return decorate


@click.command("deploy-market", cls=ConnectedProviderCommand)
@network_option()
@signer_option()
@board_option()
def deploy_market(account, board_address):
    """Deploy a ModelPurchase on the task board and remember it for this chain."""
    from ape_crowdml.purchase import deploy_market as deploy

    market = deploy(account, _board(board_address))
    click.echo(f"market {market.address} deployed on board {market.board.address}")


@market_command(name="open")
@click.argument("test_data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), required=True,
              help="Test samples each evaluation draws with its coin.")
@click.option("--threshold", type=Percent(), required=True,
              help="The bar: precision in percent, e.g. 90.")
@click.option("--price", type=WEI, required=True, help="Paid to the seller of a good model.")
@click.option("--reward", type=WEI, required=True, help="Each evaluation task's reward.")
@click.option("--deposit", type=WEI, required=True, help="Each evaluating worker's deposit.")
@click.option("--workers", type=int, required=True, help="Workers per evaluation task.")
@click.option("--rounds", default=3, show_default=True,
              help="Evaluation tasks tried before the price returns to the buyer.")
@click.option("--data-uri", metavar="URL",
              help="Where workers fetch TEST_DATA once released (default: the file).")
@click.option("--offer-blocks", default=200, show_default=True)
@click.option("--release-blocks", default=20, show_default=True)
@click.option("--finalize-blocks", default=20, show_default=True)
@click.option("--join-blocks", default=20, show_default=True)
@click.option("--commit-blocks", default=20, show_default=True)
@click.option("--reveal-blocks", default=20, show_default=True)
@click.option("--offer-bond", type=WEI, default=None,
              help="What an offer locks, yours if its model is refused (default: the reward).")
@yes_option()
def open_order(account, market_address, test_data, samples, threshold, price, reward, deposit,
               workers, rounds, data_uri, offer_blocks, release_blocks, finalize_blocks,
               join_blocks, commit_blocks, reveal_blocks, offer_bond, skip_confirmation):
    """Order a model: escrow PRICE + REWARD; the test data stays here until an offer."""
    from ape_crowdml.purchase import Buyer
    from ape_crowdml.render import wei

    buyer = Buyer(_market(market_address), account)
    template = buyer.template(test_data, samples=samples, data_uri=data_uri)
    confirm(f"Open an order from {account.address}, escrowing {wei(price + reward)} (price "
            f"{wei(price)} + evaluation reward {wei(reward)})?", skip_confirmation)
    order_id = buyer.open(template, price=price, threshold_bps=threshold, reward=reward,
                          deposit=deposit, workers=workers, max_rounds=rounds,
                          offer_blocks=offer_blocks, release_blocks=release_blocks,
                          finalize_blocks=finalize_blocks, join_blocks=join_blocks,
                          commit_blocks=commit_blocks, reveal_blocks=reveal_blocks,
                          offer_bond=offer_bond)
    click.echo(f"order {order_id} opened on market {buyer.market.address}")


@market_command()
@order_argument
@click.argument("model_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--uri", metavar="URL",
              help="The folder workers read sealed copies from (default: your result store's).")
def offer(account, market_address, order_id, model_file, uri):
    """Lock MODEL_FILE into ORDER with the order's offer bond; nothing is served yet."""
    from ape_crowdml.errors import SpecError
    from ape_crowdml.purchase import Seller

    if not model_file.is_file():
        raise SpecError(f"model file {model_file} does not exist")
    spec = Seller(_market(market_address), account).offer(order_id, model_file, uri)
    click.echo(f"offered to order {order_id}; evaluation spec 0x{spec.hex()}")


@market_command()
@order_argument
@click.argument("model_file", type=click.Path(dir_okay=False, path_type=Path))
def serve(account, market_address, order_id, model_file):
    """Seal MODEL_FILE to each key the current round's full roster presented, and say so."""
    from ape_crowdml.errors import SpecError
    from ape_crowdml.purchase import Seller

    if not model_file.is_file():
        raise SpecError(f"model file {model_file} does not exist")
    served = Seller(_market(market_address), account).serve(order_id, model_file)
    click.echo(f"order {order_id}: model served to {len(served)} worker"
               f"{'' if len(served) == 1 else 's'}")


@market_command()
@order_argument
def decline(account, market_address, order_id):
    """Turn down ORDER's offer before releasing the data: the order is open again."""
    from ape_crowdml.purchase import Buyer

    stage = Buyer(_market(market_address), account).decline(order_id)
    click.echo(f"order {order_id}: offer declined, {stage.label} for offers again")


@market_command(name="release-data")
@order_argument
def release_data(account, market_address, order_id):
    """Release the test data: the evaluation task goes on the board."""
    from ape_crowdml.purchase import Buyer

    task_id = Buyer(_market(market_address), account).release_data(order_id)
    click.echo(f"order {order_id}: evaluation task {task_id} published")


@market_command()
@order_argument
def advance(account, market_address, order_id):
    """Settle or abort a due evaluation task, retry it, or close an order that cannot finish."""
    from ape_crowdml.purchase import Trader

    trader = Trader(_market(market_address), account)
    stage = trader.advance(order_id)
    info = trader.market.order(order_id)
    click.echo(f"order {order_id}: {stage.label}, round {info.rounds} (task {info.task_id})")


@market_command()
@order_argument
@click.option("--bits", "bits_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The agreed bitstring's encoding (default: fetched from the artifact store).")
def finalize(account, market_address, order_id, bits_file):
    """Hand the contract the agreed bitstring; it counts the ones and decides."""
    from crowdml_compute.digest import decode_bits
    from ape_crowdml.errors import SpecError
    from ape_crowdml.purchase import Trader

    bits = None
    if bits_file is not None:
        try:
            bits = decode_bits(bits_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise SpecError(f"{bits_file} is not a crowdml bitstring: {exc}") from None
    trader = Trader(_market(market_address), account)
    stage = trader.finalize(order_id, bits)
    info = trader.market.order(order_id)
    click.echo(f"order {order_id}: {stage.label} (bar {info.threshold / 100:g} % of "
               f"{info.samples} samples)")


@market_command()
@order_argument
def cancel(account, market_address, order_id):
    """End an order no offer answered, or whose offer the buyer never released data for."""
    from ape_crowdml.purchase import Buyer

    stage = Buyer(_market(market_address), account).cancel(order_id)
    click.echo(f"order {order_id}: {stage.label}; the buyer may claim its refund")


@market_command()
@order_argument
def claim(account, market_address, order_id):
    """Collect what ORDER owes you: the price or the refund, an offer's bond."""
    from ape_crowdml.purchase import Trader
    from ape_crowdml.render import wei

    paid = Trader(_market(market_address), account).claim(order_id)
    click.echo(f"claimed {wei(paid)} from order {order_id}")


@market_command(account=False)
@order_argument
@output_format_option()
def status(market_address, order_id, output_format):
    """Stage, terms, deadlines and evaluation of one order."""
    from ape_crowdml.render import order_record, order_table

    market = _market(market_address)
    _echo(output_format, lambda: order_table(market, order_id),
          lambda: order_record(market, order_id))
