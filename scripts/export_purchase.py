"""Write the compiled ModelPurchase into the plugin package (`ape run export_purchase`).

The plugin deploys and talks to the purchase contract from this file, as it does the board's
(scripts/export_taskboard.py); tests/board/test_packaged_contract.py fails when
contracts/ModelPurchase.vy changes without a re-export.
"""

from ape import project

from ape_crowdml.board import PACKAGED_FIELDS
from ape_crowdml.purchase import PACKAGED_PURCHASE


def main():
    contract_type = project.ModelPurchase.contract_type
    PACKAGED_PURCHASE.write_text(contract_type.model_dump_json(include=PACKAGED_FIELDS, by_alias=True) + "\n")
    print(f"wrote {PACKAGED_PURCHASE}")
