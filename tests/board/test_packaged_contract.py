"""The TaskBoard the plugin ships is the one contracts/TaskBoard.vy compiles to."""

from ape_crowdml.board import taskboard_container


def test_packaged_taskboard_matches_the_source(project):
    packaged = taskboard_container().contract_type
    compiled = project.TaskBoard.contract_type
    stale = "ape_crowdml/TaskBoard.json is stale: run `ape run export_taskboard`"
    assert packaged.abi == compiled.abi, stale
    assert packaged.deployment_bytecode == compiled.deployment_bytecode, stale
    assert packaged.runtime_bytecode == compiled.runtime_bytecode, stale


def test_packaged_taskboard_deploys_and_runs(accounts):
    board = taskboard_container().deploy(accounts[9], sender=accounts[0])
    receipt = board.publish(b"\x01" * 32, b"\x02" * 32, 2, 2, 5, 5, 5, b"\x00" * 32, [],
                            value=10, sender=accounts[0])
    assert receipt.decode_logs(board.Published)[0].task_id == 1
    assert board.balance == 10


def test_packaged_model_purchase_matches_the_source(project):
    from ape_crowdml.purchase import purchase_container

    packaged = purchase_container().contract_type
    compiled = project.ModelPurchase.contract_type
    stale = "ape_crowdml/ModelPurchase.json is stale: run `ape run export_purchase`"
    assert packaged.abi == compiled.abi, stale
    assert packaged.deployment_bytecode == compiled.deployment_bytecode, stale
    assert packaged.runtime_bytecode == compiled.runtime_bytecode, stale
