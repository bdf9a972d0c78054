"""Write the compiled TaskBoard into the plugin package (`ape run export_taskboard`).

The plugin deploys and talks to the board from this file, so `pip install ape-crowdml`
works in any ape project, with the exact bytecode this repository tests.
tests/board/test_packaged_contract.py fails when contracts/TaskBoard.vy changes without a re-export.
"""

from ape import project

from ape_crowdml.board import PACKAGED_TASKBOARD, PACKAGED_FIELDS


def main():
    contract_type = project.TaskBoard.contract_type
    PACKAGED_TASKBOARD.write_text(contract_type.model_dump_json(include=PACKAGED_FIELDS, by_alias=True) + "\n")
    print(f"wrote {PACKAGED_TASKBOARD}")
