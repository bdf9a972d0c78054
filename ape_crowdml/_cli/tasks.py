"""`ape crowdml …`: a thin skin over ape_crowdml.parties. Every user mistake is one line
(`ERROR: …`, exit status 1, as ape's own commands abort), never a traceback; status 2 is
click's, for a malformed command line (a malformed value is one line too). Every command takes
ape's `-v/--verbosity`; the ones that send ether ask first, unless given `-y/--yes`."""

from __future__ import annotations

from pathlib import Path

import click
from ape.cli import ConnectedProviderCommand, network_option

from ape_crowdml._cli.common import (WEI, CrowdmlGroup, _board, _echo, _echo_table, _requester,
                                     _worker, board_option)
from ape_crowdml._cli.options import (ADDRESS, BYTES32, JSON, confirm, output_format_option,
                                      signer_option, yes_option)


def connected(*, account: bool = True, name: str | None = None, unattended: bool = False):
    """A command on a network (`--network`), on a board (`--board`), and usually as an account
    (`--account alias` or `--account TEST::0`; asked for when left out, unless `unattended`)."""

    def decorate(function):
        function = board_option()(function)
        if account:
            function = signer_option(prompt=not unattended)(function)
        function = network_option()(function)
        return cli.command(name, cls=ConnectedProviderCommand)(function)

    return decorate


task_argument = click.argument("task_id", metavar="TASK", type=click.IntRange(min=1))


@click.group(cls=CrowdmlGroup)
def cli():
    """Outsource randomized ML jobs to n paid workers on a task board."""


@connected()
@click.option("--sink", type=ADDRESS, metavar="ADDRESS",
              help="Where forfeited deposits go (default: burned, sent to 0x…dEaD). Workers refuse "
                   "a board whose sink is not in their accepted list, by default the burn address.")
@yes_option()
def deploy(account, board_address, sink, skip_confirmation):
    """Deploy a task board and remember it for this chain."""
    from ape_crowdml import preflight
    from ape_crowdml.board import NEUTRAL_SINK
    from ape_crowdml.parties import deploy_board

    sink = sink or NEUTRAL_SINK
    preflight.check_deploy(sink, account.address)  # a refusal needs no answer
    burned = " (burned)" if sink == NEUTRAL_SINK else ""
    confirm(f"Deploy a task board from {account.address} (gas only), its forfeited deposits "
            f"going to {sink}{burned} for good?", skip_confirmation)
    board = deploy_board(account, sink)
    click.echo(f"board {board.address} deployed at block {board.start_block}, "
               f"forfeits go to {board.sink}")


@connected()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reward", type=WEI, required=True, help="Escrowed reward, shared by the workers.")
@click.option("--deposit", type=WEI, required=True, help="Each worker's deposit (even).")
@click.option("--workers", type=int, required=True, help="Number of workers n (at least 2).")
@click.option("--join-blocks", default=20, show_default=True,
              help="Blocks the roster stays open.")
@click.option("--commit-blocks", default=20, show_default=True,
              help="Blocks to train and commit, once the coin is fixed.")
@click.option("--reveal-blocks", default=20, show_default=True,
              help="Blocks to reveal, once the commit window closes.")
@click.option("--chain-coin", is_flag=True,
              help="Let the board derive the coin from a block instead of committing one.")
@click.option("--trivial", multiple=True, type=BYTES32,
              help="A result digest to count as no submission (E_ck); repeatable.")
@click.option("--spec-uri", metavar="URL",
              help="Where workers fetch the spec, if you serve it yourself (default: the spec's "
                   "artifact store, or this project's, where it is uploaded).")
@yes_option()
def publish(account, board_address, spec_file, reward, deposit, workers, join_blocks,
            commit_blocks, reveal_blocks, chain_coin, trivial, spec_uri, skip_confirmation):
    """Publish the job in SPEC_FILE and escrow the reward."""
    from ape_crowdml.board import hex32
    from ape_crowdml.render import wei

    requester = _requester(board_address, account)
    question = (f"Publish {spec_file}, escrowing a reward of {wei(reward)} from "
                f"{account.address} ({workers} workers, {wei(deposit)} deposit each)?")
    task_id = requester.publish(
        spec_file, reward=reward, deposit=deposit, workers=workers, join_blocks=join_blocks,
        commit_blocks=commit_blocks, reveal_blocks=reveal_blocks, requester_coin=not chain_coin,
        trivial=trivial, spec_uri=spec_uri, confirm=lambda: confirm(question, skip_confirmation))
    task = requester.board.task(task_id)
    click.echo(f"task {task_id} published: spec {hex32(task.spec)} at "
               f"{requester.board.spec_uri(task_id)}, data {hex32(task.data)}")


spec_option = click.option("--spec", "spec_file", type=click.Path(dir_okay=False, path_type=Path),
                           help="The task's spec file (default: fetched from the spec URI the "
                                "task was published with, checked against its digest).")


@connected()
@task_argument
@spec_option
@yes_option()
def join(account, board_address, task_id, spec_file, skip_confirmation):
    """Check policy, digests and environment, then lock the deposit."""
    from ape_crowdml.render import wei

    def ask(deposit: int) -> None:
        confirm(f"Join task {task_id}, locking a deposit of {wei(deposit)} from "
                f"{account.address}?", skip_confirmation)

    _worker(board_address, account).join(task_id, spec_file, confirm=ask)
    click.echo(f"joined task {task_id}")


@connected()
@task_argument
def release_coin(account, board_address, task_id):
    """Open the requester's stored coin: work can start."""
    coin = _requester(board_address, account).release_coin(task_id)
    click.echo(f"coin 0x{coin.hex()} released for task {task_id}")


@connected()
@task_argument
@spec_option
def work(account, board_address, task_id, spec_file):
    """Run the job with the task's coin, store the salt, then commit."""
    from ape_crowdml.render import run_lines

    worker = _worker(board_address, account)
    # Warm job processes (`crowdml: worker: warm_jobs:`) draw no progress bar: a fresh process
    # draws it where someone watches, or where the job would run in a fresh process anyway.
    progress = click.get_text_stream("stderr").isatty() or not worker.config.worker.warm_jobs
    digest = worker.work(task_id, spec_file, progress=progress)
    for line in run_lines(worker.summary(task_id)):
        click.echo(line, err=True)
    click.echo(f"committed to result 0x{digest.hex()} for task {task_id}")


@connected()
@task_argument
def reveal(account, board_address, task_id):
    """Open the stored commitment (the artifact is published once the task agreed)."""
    digest = _worker(board_address, account).reveal(task_id)
    click.echo(f"revealed 0x{digest.hex()} for task {task_id}")


@connected()
@task_argument
def settle(account, board_address, task_id):
    """Fix the outcome once reveals are in or the reveal window closed."""
    phase = _requester(board_address, account).settle(task_id)
    click.echo(f"task {task_id} settled: {phase.label}")


@connected()
@task_argument
def claim(account, board_address, task_id):
    """Withdraw what the task owes this account; a worker first publishes its artifact if the
    task agreed."""
    from ape_crowdml.render import wei

    paid = _worker(board_address, account).claim(task_id)
    click.echo(f"claimed {wei(paid)} from task {task_id}")


@connected()
@task_argument
def abort(account, board_address, task_id):
    """End a task before work begins (short roster, or coin withheld)."""
    phase = _requester(board_address, account).abort(task_id)
    click.echo(f"task {task_id} ended: {phase.label}")


@connected(account=False)
@task_argument
@output_format_option()
def status(board_address, task_id, output_format):
    """Phase, deadline, roster, reveals, outcome and payouts of one task."""
    from ape_crowdml.render import task_record, task_table

    board = _board(board_address)
    _echo(output_format, lambda: task_table(board, task_id), lambda: task_record(board, task_id))


@connected(account=False, name="list")
@output_format_option()
def list_tasks(board_address, output_format):
    """Every task on the board."""
    from ape_crowdml.render import board_records, board_table

    board = _board(board_address)
    _echo(output_format, lambda: board_table(board), lambda: board_records(board))


@connected(account=False)
@task_argument
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the canonical bytes (default: task-<TASK>.crowdml).")
def fetch(board_address, task_id, out):
    """Download the agreed result, verify it against result_of, print its parameters."""
    from ape.utils.basemodel import ManagerAccessMixin

    from crowdml_compute.digest import decode_result
    from ape_crowdml.parties import Party

    from ape_crowdml.render import run_lines

    # Anyone may fetch a published result; no account signs anything here.
    party = Party(_board(board_address), account=None)
    delivery = party.fetch_delivery(task_id)
    result = party.board.result(task_id)
    out = out or ManagerAccessMixin.local_project.path / f"task-{task_id}.crowdml"
    out.write_bytes(delivery.artifact)
    click.echo(f"result 0x{result.hex()} verified (read at {delivery.uri}), written to {out}")
    _echo_shapes(decode_result(delivery.artifact))
    for line in run_lines(delivery.summary):
        click.echo(line)


@connected(account=False)
@task_argument
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to draw the loss curves (default: task-<TASK>-report.png; the "
                   "suffix picks the format: .png, .svg, .pdf).")
def report(board_address, task_id, out):
    """What the workers of a settled task said of their runs: each epoch's loss, the final
    metrics, and for a disagreed task the epoch where their transcripts part; drawn to --out."""
    from ape.utils.basemodel import ManagerAccessMixin

    from ape_crowdml.parties import Party
    from ape_crowdml.report import draw, run_report

    party = Party(_board(board_address), account=None)
    found = run_report(party, task_id)
    for line in found.lines():
        click.echo(line)
    out = out or ManagerAccessMixin.local_project.path / f"task-{task_id}-report.png"
    click.echo(f"drawn to {draw(found, out)}")


def _echo_shapes(tree, prefix: str = "") -> None:
    if not isinstance(tree, dict):
        click.echo(f"  {prefix or 'bits'}: {tree.shape} {tree.dtype}")
        return
    for key, value in tree.items():
        _echo_shapes(value, f"{prefix}/{key}" if prefix else key)


@cli.command()
@click.argument("job")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hparams", type=JSON(), default="{}", show_default=True,
              help="Hyperparameters as JSON.")
@click.option("--profile", default=None,
              help="Environment profile workers must match (default: cpu-portable for a job "
                   "with exact arithmetic, else cpu-exact).")
@click.option("--store", metavar="URL",
              help="Your store (fsspec URL) where publish uploads the spec for workers to read.")
@click.option("--seal/--no-seal", default=True, show_default=True,
              help="Make a result key in the state folder and name it in the spec, so that "
                   "workers upload the result sealed to it and only you can open it.")
@click.option("--data-uri", metavar="URL",
              help="Where workers fetch DATA (any fsspec URL; default: DATA's local path).")
@click.option("--canary", "canary_hparams", type=JSON(),
              help="The canary's hyperparameter overrides (default: the job's own, a few steps at "
                   "the real model and batch shapes), e.g. '{\"epochs\": 1}'.")
@click.option("--no-canary", is_flag=True,
              help="Add no canary: workers then cannot check their machine before depositing.")
@click.option("--digits", is_flag=True, help="First write scikit-learn's digits set to DATA.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="spec.json",
              show_default=True, help="Where to write the spec.")
def make_spec(job, data, hparams, profile, store, seal, data_uri, canary_hparams, no_canary,
              digits, out):
    """Write a job spec for JOB on DATA (computes both digests, normalises the hyperparameters,
    runs a canary here whose digest workers must reproduce before committing); prints its digest.
    JOB is a job file or the name of a shipped one (train_classifier, evaluate_classifier)."""
    from ape_crowdml.config import crowdml_config
    from crowdml_compute.jobs import resolve_job
    from ape_crowdml.errors import SpecError
    from crowdml_compute.spec import make_spec as build, save_spec

    if no_canary and canary_hparams is not None:
        raise SpecError("--canary and --no-canary exclude each other")
    if digits:
        from crowdml_compute.data import export_digits

        export_digits(data)
    folders = crowdml_config().jobs_folder
    job = resolve_job(job, folders)
    spec = build(job, data, hparams, profile=profile, store=store)
    if not no_canary:
        from crowdml_compute.runner import with_canary

        click.echo("running the canary here (a short run of the job at its real shapes, whose "
                   "digest workers must reproduce before depositing)…", err=True)

        # A fixed, public coin: the canary checks the machine, not the worker's honesty.
        # It runs on the local copy: the data need not be uploaded yet.
        spec = with_canary(spec, bytes(32), canary_hparams, job_folders=[*folders, job.parent])
    if data_uri:
        spec = spec.model_copy(update={"data_uri": data_uri})
    if seal:
        from ape_crowdml.store import Store

        result_key = Store(crowdml_config().state_folder).new_result_key()
        spec = spec.model_copy(update={"result_key": "0x" + result_key.hex()})
    save_spec(spec, out)
    click.echo(f"{out}: spec 0x{spec.digest().hex()}")

@cli.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--coin", type=BYTES32, required=True, help="The coin: 0x + 64 hex digits.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for result.bin and result.json.")
def run_job(spec_file, coin, out):
    """Run a spec with a coin, off chain; prints the result digest."""
    from crowdml_compute.runner import run_job as run
    from crowdml_compute.spec import load_spec

    from ape_crowdml.render import run_lines

    result = run(load_spec(spec_file), coin, out=out, progress=True)
    for line in run_lines(result.summary()):
        click.echo(line, err=True)
    click.echo("0x" + result.digest.hex())


@connected(unattended=True)
@click.option("--tasks", type=click.IntRange(min=1),
              help="Stop once this many of its tasks have ended (default: run forever).")
@click.option("--poll", default=2.0, show_default=True, help="Seconds between idle polls.")
@click.option("--mine-when-idle", is_flag=True,
              help="Mine a block at every idle poll while no job trains, for a local chain nobody "
                   "else uses (on a shared one it closes the others' windows while they train).")
@click.option("--page-blocks", type=click.IntRange(min=1),
              help="Blocks per event query (default: `crowdml: agent: page_blocks:`, 2000).")
@click.option("--max-fee", type=WEI, help="Most wei per gas its transactions pay, in all "
                                          "(default: `crowdml: agent: max_fee:`, or ape's).")
@click.option("--priority-fee", type=WEI, help="Most wei per gas to the block's proposer "
                                               "(default: `crowdml: agent: priority_fee:`).")
@click.option("--autosign", is_flag=True,
              help="Sign with a keyfile account without asking, unlocked once with the "
                   "passphrase in APE_ACCOUNTS_<alias>_PASSPHRASE.")
@click.option("--warm-jobs/--cold-jobs", default=None,
              help="Run jobs and canaries in warm processes (same digests, no start-up per "
                   "job) or each in a fresh one (default: `crowdml: worker: warm_jobs:`, off).")
@click.option("--drain", is_flag=True,
              help="Join no new task, finish the ones joined, then exit: run it until it does "
                   "before upgrading crowdml.")
def agent(account, board_address, tasks, poll, mine_when_idle, page_blocks, max_fee,
          priority_fee, autosign, warm_jobs, drain):
    """Work on its own: join accepted tasks, work, commit, reveal, settle, claim. It never
    waits for a person: an account that would ask before signing is refused at the start, and
    so, unless draining, is a task joined under another crowdml version's compute code and yet
    to be committed to (reinstall that version to finish it)."""
    from ape_crowdml.agent import Agent, sign_unattended
    from ape_crowdml.errors import CannotSignUnattended

    if account is None:
        raise CannotSignUnattended("the agent runs unattended and cannot ask for an account: "
                                   "name it with --account ALIAS (or TEST::N)")
    sign_unattended(account, autosign=autosign)
    from ape_crowdml.config import crowdml_config
    from ape_crowdml.parties import Worker

    config = crowdml_config()
    if warm_jobs is not None:
        config = config.model_copy(
            update={"worker": config.worker.model_copy(update={"warm_jobs": warm_jobs})})
    worker = Worker(_board(board_address), account, config=config)
    log = _agent_log()
    agent = Agent(worker, mine_when_idle=mine_when_idle, page_blocks=page_blocks,
                  max_fee=max_fee, priority_fee=priority_fee, drain=drain, log=log)
    doing = "draining (joining nothing new)" if drain else "watching"
    log(f"agent {account.address} {doing} board {worker.board.address} from block "
        f"{agent.next_block}")
    agent.run(tasks=tasks, poll_seconds=poll)


def _agent_log():
    """The agent's log: ape's log format and level (`-v`), each line with its time. The agent
    module's own debug records (a failed step's traceback, at `-v DEBUG`) go the same way."""
    from ape.logging import DEFAULT_LOG_FORMAT, get_logger, logger

    agent_logger = get_logger("ape_crowdml.agent", fmt="%(asctime)s " + DEFAULT_LOG_FORMAT)
    agent_logger.setLevel(logger.level)
    agent_logger.propagate = False
    return agent_logger.info


@cli.command(cls=ConnectedProviderCommand)
@network_option()
def demo():
    """Play whole tasks with 3 test-account workers on a local chain, telling each step."""
    from ape_crowdml.demo import run_demo

    run_demo()


@cli.group(cls=CrowdmlGroup, name="job-env")
def job_env():
    """Job environments: the interpreter each job stack runs its jobs in."""


@job_env.command(name="create")
@click.argument("stack", required=False)
@click.option("--profile", "profile_name", default="cpu-portable", show_default=True,
              help="Build the stack this profile runs on (when STACK is not given).")
@click.option("--path", type=click.Path(file_okay=False, path_type=Path),
              help="Where to build it (default: `crowdml: job_env_folder:`/STACK); then name "
                   "its bin/python under `crowdml: job_envs:`.")
@click.option("--python", metavar="PYTHON", help="The Python to build it from "
                                                 "(default: pythonX.Y on PATH).")
@click.option("--system-site-packages", is_flag=True,
              help="Let it see the base Python's packages (a machine image that carries the "
                   "stack already); with --no-install, nothing is installed.")
@click.option("--install/--no-install", default=True, show_default=True,
              help="Install the stack's lock, every package checked against its hash.")
def job_env_create(stack, profile_name, path, python, system_site_packages, install):
    """Build the environment of a job stack (a venv with its pinned packages), then check it
    against the profile's pins as a worker does before a deposit."""
    from crowdml_compute import jobenv
    from crowdml_compute.child import check_environment
    from crowdml_compute.profile import PROFILES, get_profile
    from ape_crowdml.config import crowdml_config
    from ape_crowdml.errors import CrowdmlError

    stack = stack or get_profile(profile_name).stack
    target = jobenv.create(stack, path, python, system_site_packages=system_site_packages,
                           install=install, echo=click.echo)
    if path is not None or stack in crowdml_config().job_envs:
        click.echo(f"name it in ape-config.yaml:  crowdml: {{job_envs: {{{stack}: {target}}}}}")
    # The checks a worker runs before a deposit, in the interpreter just built.
    for profile in (p for p in PROFILES.values() if p.stack == stack):
        try:
            check_environment(profile, python=target)
        except CrowdmlError as exc:
            if profile.platform == "cpu":
                raise
            click.echo(f"profile {profile.name}: not on this machine: {exc}")
        else:
            click.echo(f"profile {profile.name}: this machine can run its jobs in {target}")


@job_env.command(name="list")
def job_env_list():
    """The job stacks, the profiles on each, and the interpreter found for each here."""
    from crowdml_compute import jobenv
    from crowdml_compute.profile import PROFILES
    from ape_crowdml.errors import CrowdmlError

    for stack in jobenv.STACKS.values():
        profiles = ", ".join(p.name for p in PROFILES.values() if p.stack == stack.name)
        try:
            where = str(jobenv.interpreter(stack.name))
        except CrowdmlError:
            where = "not built (ape crowdml job-env create " + stack.name + ")"
        click.echo(f"{stack.name} (Python {stack.python}; {profiles}): {where}")

