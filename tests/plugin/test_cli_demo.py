"""`ape crowdml demo`, the README's first command, through ape's root CLI."""

import re

from ape._cli import cli as ape_cli
from click.testing import CliRunner


def test_demo_pays_agreement_and_penalises_junk(networks, project):
    overrides = {}
    if networks.provider.name == "foundry":
        overrides["foundry"] = {"host": networks.provider.uri}
    with project.temp_config(**overrides):
        result = CliRunner().invoke(
            ape_cli, ["crowdml", "demo", "--network", networks.provider.network_choice],
            catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"payouts \(agreed\)", out) and re.search(r"payouts \(disagreed\)", out)
    # Round 1: each of 3 workers nets reward/3 = 0.01 ETH; round 2: each loses d/2 = 0.01 ETH
    # and 3 × 0.01 ETH go to the sink.
    round_1, rest = out.split("round 2")
    round_2, round_3 = rest.split("round 3")
    assert round_1.count("+0.01 ETH") == 3 and "fetched model" in round_1
    assert round_2.count("-0.01 ETH") == 3 and re.search(r"forfeit sink.*\+0\.03 ETH", round_2)
    # Round 3: the purchase contract counts the agreed bitstrings; it buys round 1's model and
    # refuses the broken one (its output layer zeroed), whose price goes back to the buyer. The
    # offer's bond (0.003 ETH) goes back to the seller of the bought model; the refused one's is
    # forfeited to the sink. Each model was served, sealed, to the full roster only.
    bought = re.search(r"order 1: (\d+) of 200 right, bar 80 %: bought; 0\.033 ETH to the seller", round_3)
    refused = re.search(r"order 2: (\d+) of 200 right, bar 80 %: refused; 0\.03 ETH to the buyer", round_3)
    assert round_3.count("seals the model to each key") == 2
    assert bought and int(bought[1]) >= 160  # the contract's own bar: 80 % of 200
    assert refused and int(refused[1]) < 60  # a constant prediction: about one class in ten
