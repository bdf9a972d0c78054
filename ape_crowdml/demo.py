"""`ape crowdml demo`: a training task played three ways on a local chain, told as it happens.

Round 1: three honest workers train the same MLP on the digits set with the requester's coin,
agree on one digest and share the reward. Round 2: one worker reveals junk instead; the results
differ, so every worker gets only half its deposit back and the requester keeps its reward.
Round 3, the paper's other instance: the requester has round 1's model evaluated on a
coin-chosen test subset and reads its precision off the agreed correctness bitstring.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .board import Board, hex32
from .config import crowdml_config
from .errors import CrowdmlError
from .parties import Requester, Worker, deploy_board
from .render import short, wei
from .store import Store

DEMO_HPARAMS = {"hidden": [32], "epochs": 10, "batch_size": 64}
EVALUATED_SAMPLES = 200
REWARD = 3 * 10**16
DEPOSIT = 2 * 10**16
WORKERS = 3
JUNK = b"junk: a worker that did not train"


@dataclass
class Timeline:
    board: Board
    rows: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, who: str, what: str) -> None:
        self.rows.append((self.board.head, who, what))

    def table(self, title: str) -> Table:
        table = Table(title=title)
        for column in ("block", "who", "what"):
            table.add_column(column)
        for block, who, what in self.rows:
            table.add_row(str(block), who, what)
        return table


def _payouts(board: Board, task_id: int, parties: dict[str, object], stakes: dict[str, int]) -> Table:
    """Each party's claim and net gain: what it got back minus what it put in."""
    claims = board.claims(task_id)
    table = Table(title=f"task {task_id}: payouts ({board.phase(task_id).label})")
    for column in ("party", "put in", "claimed", "net"):
        table.add_column(column, justify="right" if column != "party" else "left")
    for name, account in parties.items():
        paid = claims.get(account.address, 0)
        net = paid - stakes[name]
        table.add_row(name, wei(stakes[name]), wei(paid), ("+" if net >= 0 else "-") + wei(abs(net)))
    forfeited = board.forfeited_by(task_id)
    table.add_row("forfeit sink", "", wei(forfeited), "+" + wei(forfeited))
    return table


def _play_round(console: Console, board: Board, requester: Requester, workers: dict[str, Worker],
                spec_file: Path, junk_worker: str | None) -> int:
    timeline = Timeline(board)
    task = requester.publish(spec_file, reward=REWARD, deposit=DEPOSIT, workers=len(workers))
    timeline.add("requester", f"publishes task {task}: reward {wei(REWARD)}, deposit "
                              f"{wei(DEPOSIT)}, n = {len(workers)}, coin committed")
    for name, worker in workers.items():
        worker.join(task)
        timeline.add(name, "checks job allowlist, data digest, environment; joins")
    coin = requester.release_coin(task)
    timeline.add("requester", f"releases coin {short(coin)}")

    for name, worker in workers.items():
        if name == junk_worker:
            worker.commit_result(task, keccak_of_junk(), JUNK)
            timeline.add(name, "commits to junk without running the job")
            continue
        console.print(f"[bold]{name}[/] runs the job with coin {short(coin)}")
        digest = worker.work(task, progress=True)
        timeline.add(name, f"runs the job, stores salt, commits to {short(digest)}")
    for name, worker in workers.items():
        digest = worker.reveal(task)
        timeline.add(name, f"reveals {short(digest)}")
    outcome = requester.settle(task)
    timeline.add("requester", f"settles: {outcome.label}")

    parties = {"requester": requester.account, **{n: w.account for n, w in workers.items()}}
    for name, party in [("requester", requester), *workers.items()]:
        if party.owed(task):
            paid = party.claim(task)
            timeline.add(name, f"claims {wei(paid)}")
    console.print(timeline.table(f"task {task}: timeline"))

    info = board.task(task)
    digests = Table(title=f"task {task}: digests", show_header=False)
    digests.add_row("spec", hex32(info.spec))
    digests.add_row("data", hex32(info.data))
    digests.add_row("coin", hex32(coin))
    reveals = board.reveals(task)
    for name, worker in workers.items():
        digests.add_row(f"{name} revealed", hex32(reveals[worker.account.address][0]))
    if outcome.name == "AGREED":
        result = requester.fetch(task)
        if isinstance(result, dict):
            kernel = result["params"]["Dense_0"]["kernel"]
            digests.add_row("fetched model", f"verified; Dense_0 kernel {kernel.shape}")
        else:
            digests.add_row("fetched bitstring", f"verified; {int(result.sum())} of {len(result)} "
                                                 f"right: precision {result.mean():.1%}")
    console.print(digests)
    stakes = {"requester": REWARD, **{name: DEPOSIT for name in workers}}
    console.print(_payouts(board, task, parties, stakes))
    return task


def keccak_of_junk() -> bytes:
    from .digest import keccak_digest

    return keccak_digest(JUNK)


def run_demo(console: Console | None = None) -> None:
    """Deploy a board on the connected local chain and play the three rounds."""
    from ape import accounts, networks
    from ape.logging import LogLevel, logger

    from .data import export_digits
    from .spec import make_spec, save_spec

    console = console or Console()
    if not networks.provider.network.is_dev:  # a local chain, or a local fork
        raise CrowdmlError("the demo uses test accounts; run it on ethereum:local:test or "
                           "ethereum:local:foundry")
    config = crowdml_config()
    # ape logs every confirmation at INFO; the timeline tells the story instead.
    with logger.at_level(LogLevel.WARNING), tempfile.TemporaryDirectory(prefix="crowdml-demo-") as tmp:
        # The demo's chain is thrown away when it ends, so are its secrets.
        config = config.model_copy(update={"state_folder": Path(tmp)})
        store = Store(config.state_folder)
        test = accounts.test_accounts
        board = deploy_board(test[0], test[9].address, config=config, store=store)
        console.print(f"board {board.address} on {networks.provider.network_choice}, "
                      f"forfeits go to {test[9].address}")

        data_file = config.data_folder / "digits.npz"
        data_digest = export_digits(data_file)
        spec = make_spec(config.jobs_folder / "train_classifier.py", data_file, DEMO_HPARAMS)
        spec_file = save_spec(spec, Path(tmp) / "spec.json")
        console.print(f"digits set {data_file} (keccak {short(data_digest)}), job "
                      f"train_classifier.py {DEMO_HPARAMS}")

        requester = Requester(board, test[0], config=config, store=store)
        workers = {f"worker {i}": Worker(board, test[i], config=config, store=store)
                   for i in range(1, WORKERS + 1)}
        console.rule("round 1: three honest workers")
        trained = _play_round(console, board, requester, workers, spec_file, junk_worker=None)
        console.rule("round 2: worker 3 reveals junk")
        _play_round(console, board, requester, workers, spec_file, junk_worker="worker 3")

        console.rule(f"round 3: evaluating round 1's model on {EVALUATED_SAMPLES} test samples")
        model_file = Path(tmp) / "model.crowdml"
        model_file.write_bytes(requester.fetch_bytes(trained))
        evaluation = make_spec(config.jobs_folder / "evaluate_classifier.py", data_file, {
            "model_uri": str(model_file), "model_digest": hex32(board.result(trained)),
            "subset_size": EVALUATED_SAMPLES})
        _play_round(console, board, requester, workers, save_spec(evaluation, Path(tmp) / "eval.json"),
                    junk_worker=None)
        store.close()
