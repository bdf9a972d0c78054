"""A requester in a process of its own: deploys a board, then (once told to go, by a file
named `go` appearing in its folder) makes a tiny training spec whose data it puts in the shared
artifact store, publishes TASKS tasks, releases each coin once the roster fills, settles what is
due and claims what it is owed, until every task ended and nothing is owed to it.

Writes board.json (the board) then result.json (task ids, times) in its folder.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from ape import accounts, networks

from ape_crowdml.artifacts import ArtifactStore
from ape_crowdml.board import Phase
from crowdml_compute.data import export_digits
from crowdml_compute.spec import make_spec, save_spec
from ape_crowdml.config import crowdml_config
from ape_crowdml.errors import CrowdmlError
from ape_crowdml.parties import Requester, deploy_board
from ape_crowdml.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import TINY_HPARAMS  # noqa: E402


def spec_file(config, folder: Path) -> tuple[Path, str | None]:
    """The tiny spec, its dataset served from the requester's own bucket (bucket.json: written
    with its own key pair, read by anyone over HTTP), else from the shared artifact store; and
    the spec's URI when it is served there too."""
    local = folder / "digits.npz"
    export_digits(local)
    own = folder / "bucket.json"
    if own.exists():
        import fsspec

        bucket = json.loads(own.read_text())
        files = fsspec.filesystem("s3", **bucket["options"])
        root = bucket["url"].removeprefix("s3://")
        files.put_file(str(local), f"{root}/digits.npz")
        uri = f"{bucket['public_url']}/digits.npz"
    else:
        bucket = None
        store = ArtifactStore(config.artifact_url())
        digest = store.put(local.read_bytes())
        uri = f"{config.artifact_url()}/0x{digest.hex()}"
    # Its result key in its own state folder: workers seal the model to it.
    key = "0x" + Store(config.state_folder).new_result_key().hex()
    spec = make_spec("train_classifier", local, TINY_HPARAMS, data_uri=uri,  # a shipped job
                     result_key=key)
    if bucket is None:
        return save_spec(spec, folder / "spec.json"), None
    files.pipe_file(f"{root}/spec.json", spec.canonical_json())
    return save_spec(spec, folder / "spec.json"), f"{bucket['public_url']}/spec.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--account", type=int, required=True)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--reward", type=int, required=True)
    parser.add_argument("--deposit", type=int, required=True)
    parser.add_argument("--join-blocks", type=int, default=60)
    parser.add_argument("--commit-blocks", type=int, default=90)
    parser.add_argument("--reveal-blocks", type=int, default=30)
    parser.add_argument("--chain-coin", action="store_true")
    args = parser.parse_args()
    folder = Path.cwd()

    with networks.parse_network_choice("ethereum:local:foundry"):
        config = crowdml_config()
        account = accounts.test_accounts[args.account]
        board = deploy_board(account, config=config)
        (folder / "board.json").write_text(json.dumps({"board": board.address}))
        spec, spec_uri = spec_file(config, folder)
        print(f"board {board.address}; waiting for the workers", flush=True)
        while not (folder / "go").exists():
            time.sleep(0.1)

        requester = Requester(board, account, config=config)
        started = time.time()
        tasks = [requester.publish(spec, reward=args.reward, deposit=args.deposit,
                                   workers=args.workers, join_blocks=args.join_blocks,
                                   commit_blocks=args.commit_blocks,
                                   reveal_blocks=args.reveal_blocks,
                                   requester_coin=not args.chain_coin, spec_uri=spec_uri)
                 for _ in range(args.tasks)]
        print(f"published {tasks}", flush=True)
        done: set[int] = set()
        while len(done) < len(tasks):
            for task in tasks:
                if task not in done and act(requester, task):
                    done.add(task)
            time.sleep(0.5)
        (folder / "result.json").write_text(json.dumps(
            {"board": board.address, "tasks": tasks, "started": started, "ended": time.time()}))
        print("all tasks ended and claimed", flush=True)


def act(requester: Requester, task: int) -> bool:
    """One step for one task; True once it ended and nothing is owed to the requester."""
    try:
        phase = requester.board.phase(task)
        if phase == Phase.AWAITING_COIN:
            requester.release_coin(task)
            print(f"task {task}: coin released", flush=True)
        elif phase == Phase.SETTLEABLE:
            print(f"task {task}: settled, {requester.settle(task).label}", flush=True)
        elif phase.ended:
            if phase == Phase.AGREED and not (Path.cwd() / f"model-{task}.crowdml").exists():
                # The model it paid for, from a URI a worker announced (its own bucket),
                # opened with the result key and checked against result_of; workers deliver
                # before they claim, so it may take a poll or two.
                (Path.cwd() / f"model-{task}.crowdml").write_bytes(requester.fetch_bytes(task))
                print(f"task {task}: model fetched, verified", flush=True)
            if requester.owed(task):
                print(f"task {task}: claimed {requester.claim(task)} wei ({phase.label})",
                      flush=True)
            return requester.owed(task) == 0
    except CrowdmlError as exc:  # e.g. a worker settled first: the next poll sees it
        print(f"task {task}: {exc}", flush=True)
    return False


if __name__ == "__main__":
    main()
