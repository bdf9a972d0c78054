"""The Python API a requester or a worker uses (the CLI and the agent are thin skins over it).

    board = find_board()                       # from ape-config.yaml or the last local deploy
    alice = Requester(board, accounts.test_accounts[0])
    task = alice.publish("spec.json", reward=10**16, deposit=2 * 10**16, workers=3)
    bob = Worker(board, accounts.test_accounts[1])
    bob.join(task); bob.work(task); bob.reveal(task)
    alice.settle(task); bob.claim(task); params = alice.fetch(task)

Every secret (coin opening, salt, result) is in the local Store before the transaction that
depends on it is sent. A worker's result artifact leaves its machine only once the task has
settled AGREED, that is once the requester has paid: before, a requester holding a seat could
fetch the work and then sabotage the task to get its reward back. It then goes to the worker's
own result store, sealed to the requester's result key, and its URI on chain
(ape_crowdml/delivery.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import ArtifactStore
from .delivery import Delivery
from . import preflight
from .board import (NEUTRAL_SINK, NO_DIGEST, Board, Phase, TaskInfo, WorkerStatus,
                    coin_hash, commitment, hex32, send)
from .config import FORK_SUFFIX, CrowdmlConfig, crowdml_config
from crowdml_compute.data import is_remote, read_verified
from crowdml_compute.jobs import JobRegistry
from .errors import (ArtifactMissing, BoardNotConfigured, CrowdmlError, DataDigestMismatch,
                     MissingSecret, ModelNotServedYet, PolicyRefused, SpecError, TaskRejected,
                     UpgradedSinceJoin, first_line)
from .policy import check_policy
from crowdml_compute.spec import JobSpec, load_spec, parse_spec
from .store import CoinOpening, Joined, Store, StoredResult

if TYPE_CHECKING:
    from crowdml_compute.runner import JobProcess


def crowdml_version() -> str:
    """The installed ape-crowdml's version, which a join records: the one to reinstall to
    finish the task after an upgrade."""
    import importlib.metadata

    try:
        return importlib.metadata.version("ape-crowdml")
    except importlib.metadata.PackageNotFoundError:  # sources on sys.path, never installed
        return "unknown"


def network_key() -> str:
    """The connected network as ecosystem:network."""
    from ape import networks

    network = networks.provider.network
    return f"{network.ecosystem.name}:{network.name}"


def find_board(address: str | None = None, *, config: CrowdmlConfig | None = None,
               store: Store | None = None) -> Board:
    """The board to use: `address`, else the config's board for this network, else the board
    most recently deployed from this machine on this chain that still has code."""
    from ape import chain

    config = config or crowdml_config()
    ecosystem, network = network_key().split(":")
    address = address or config.board_for(ecosystem, network)
    if address:
        return Board(address)
    store = store or Store(config.state_folder)
    for stored, deployed_block in store.boards(chain.chain_id):
        if deployed_block <= chain.blocks.head.number and chain.provider.get_code(stored):
            return Board(stored, start_block=deployed_block)
    hint = ""
    if chain.provider.network.is_local and chain.provider.name == "test":
        # ape's default local chain lives only as long as this command: its board is gone.
        hint = ("; ethereum:local:test lasts one command: pass --network "
                "ethereum:local:foundry to reach a running anvil")
    elif getattr(chain.provider, "process", None) is not None:
        # ape-foundry found no node at its host and started a fresh anvil for this command:
        # the chain holding the user's board is elsewhere.
        hint = (f"; no node was running at {chain.provider.uri}, so ape started a fresh "
                f"chain (id {chain.chain_id}) for this command: set APE_FOUNDRY_HOST (or "
                "`foundry: host:`) to the node that holds your board")
    # A fork takes its upstream's entry: name the one a user would write.
    raise BoardNotConfigured(
        f"no task board configured for {network_key()}: set `crowdml: boards: {ecosystem}: "
        f"{network.removesuffix(FORK_SUFFIX)}:` in ape-config.yaml, pass --board, or run "
        f"`ape crowdml deploy`{hint}")


def deploy_board(account, sink: str = NEUTRAL_SINK, *, config: CrowdmlConfig | None = None,
                 store: Store | None = None) -> Board:
    """Deploy a board and remember it for this chain, so later commands find it. Forfeits are
    burned unless `sink` names another address (which default workers refuse)."""
    config = config or crowdml_config()
    store = store or Store(config.state_folder)
    board = Board.deploy(account, sink)
    store.add_board(board.chain_id, board.address, board.start_block)
    return board


def as_spec(spec: JobSpec | str | Path) -> JobSpec:
    return spec if isinstance(spec, JobSpec) else load_spec(spec)


@dataclass
class Work:
    """A task's job under way (`Worker.start_work`); `done` once its result can be committed."""

    task: TaskInfo
    coin: bytes
    store_url: str  # where the artifact goes once the task settles agreed
    job: JobProcess | None = None  # None when a stored result is reused
    stored: tuple[bytes, bytes] | None = None  # (result digest, artifact) once known
    summary: dict | None = None  # the job's transcript and metrics (JobResult.summary)

    @property
    def done(self) -> bool:
        return self.job is None or not self.job.running

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


ORDER_URI_SCHEME = "crowdml-order:"  # ModelPurchase's evaluation tasks (contracts/ModelPurchase.vy)


# A spec is a few kilobytes of JSON; a spec URI serving more is refused unread.
MAX_SPEC_BYTES = 1 << 20


def spec_at(uri: str, task: TaskInfo) -> JobSpec:
    """The spec at a task's spec URI, verified against the task's spec digest: any fsspec URL
    (a path, file://, http(s)://, s3://…), or `crowdml-order:<id>` for a model purchase's
    evaluation, rebuilt from the events of the market that published the task."""
    if uri.startswith(ORDER_URI_SCHEME):
        return _order_spec(uri, task)
    try:
        text = read_verified(uri, task.spec, max_bytes=MAX_SPEC_BYTES)
    except DataDigestMismatch as exc:
        raise SpecError(f"task {task.task_id}'s spec: {exc}") from None
    return parse_spec(text, uri)


def _order_id(uri: str, task: TaskInfo) -> int:
    """The order a `crowdml-order:<id>` spec URI names."""
    order_id = uri.removeprefix(ORDER_URI_SCHEME)
    if not order_id.isdigit():
        raise SpecError(f"task {task.task_id}'s spec URI {uri} names no order")
    return int(order_id)


def _order_spec(uri: str, task: TaskInfo) -> JobSpec:
    from ape.exceptions import ApeException

    from .purchase import Market

    order_id = _order_id(uri, task)
    try:
        return Market(task.requester).evaluation_spec(order_id)
    except (ApeException, CrowdmlError) as exc:
        raise SpecError(f"task {task.task_id}'s spec URI {uri}: its requester "
                        f"{task.requester} gives no evaluation spec ({first_line(exc)})") from None


def _serve_deadline(task: TaskInfo) -> int:
    """The last block a model purchase's seller may serve the round in, from the board's own
    task as ModelPurchase computes it (0 outside the commit window): a requester contract that
    only claims to be a market cannot make a worker wait past it."""
    return task.deadline - task.commit_blocks // 2 if task.phase == Phase.COMMIT else 0


def _task_spec(task: TaskInfo, spec: JobSpec) -> JobSpec:
    """`spec`, if its digest is the one `task` published; SpecError otherwise."""
    if spec.digest() != task.spec:
        raise SpecError(f"this spec has digest {hex32(spec.digest())}, task {task.task_id} "
                        f"published {hex32(task.spec)}; get the requester's spec file")
    return spec


class Party:
    """What requesters and workers share: a board, an account, the store and the config.

    A bare Party (account None) can read: `spec_of`, `fetch`."""

    def __init__(self, board: Board, account, *, config: CrowdmlConfig | None = None,
                 store: Store | None = None):
        self.board = board
        self.account = account
        self.config = config or crowdml_config()
        self.store = store or Store(self.config.state_folder)
        self.artifacts = ArtifactStore(self.config.artifact_url())
        self.local_uris = self.config.local_uris_allowed()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.account.address} on {self.board.address}>"

    def artifacts_for(self, spec: JobSpec) -> ArtifactStore:
        return ArtifactStore(spec.store) if spec.store else self.artifacts

    def spec_of(self, task_id: int, spec: JobSpec | str | Path | None = None) -> JobSpec:
        """The task's spec: the given one, or the one the chain says where to find (the spec
        URI of the task's Published event), or failing that the one in this party's artifact
        store under the task's spec digest. Either way its digest must be the task's."""
        task = self.board.task(task_id)
        return _task_spec(task, self._published_spec(task) if spec is None else as_spec(spec))

    def _published_spec(self, task: TaskInfo) -> JobSpec:
        return self._spec_at_uri(task, self.board.spec_uri(task.task_id))

    def _spec_at_uri(self, task: TaskInfo, uri: str) -> JobSpec:
        try:
            if not uri:
                raise SpecError(f"task {task.task_id} names no spec URI")
            return spec_at(uri, task)
        except CrowdmlError as at_uri:
            try:  # the store this party shares with the requester, if any
                return parse_spec(self.artifacts.get(task.spec), f"spec {hex32(task.spec)}")
            except ArtifactMissing:
                raise at_uri from None

    def settle(self, task_id: int) -> Phase:
        return self.board.settle(self.account, task_id)

    def claim(self, task_id: int) -> int:
        return self.board.claim(self.account, task_id)

    def owed(self, task_id: int) -> int:
        return self.board.owed(task_id, self.account.address)

    def fetch_bytes(self, task_id: int) -> bytes:
        """The agreed result's canonical bytes, from the URIs its workers announced (opened
        with this folder's result key when the spec names one), verified against result_of on
        chain."""
        return self.fetch_delivery(task_id).artifact

    def _result_secret(self, task_id: int, spec: JobSpec) -> bytes | None:
        """The secret half of the spec's result key from this folder; None for a spec without
        one; MissingSecret if this folder did not make it."""
        if spec.result_key is None:
            return None
        secret = self.store.result_key(bytes.fromhex(spec.result_key[2:]))
        if secret is None:
            raise MissingSecret(
                f"task {task_id}'s result is sealed to result key {spec.result_key}, whose "
                f"secret half is not in {self.store.path}: fetch in the state folder of "
                "the requester that made the spec")
        return secret

    def run_summaries(self, task_id: int) -> tuple[dict[str, Delivery], list[str]]:
        """What each worker that announced on a settled task said of its run (its transcript,
        each epoch's loss, the final metrics: the worker's word), opened with this folder's
        result key; and a line for each announced URI that gave nothing usable."""
        from .delivery import read_summaries

        secret = self._result_secret(task_id, self.spec_of(task_id))
        return read_summaries(self.board.announcements(task_id), secret_key=secret,
                              local_ok=self.local_uris)

    def fetch_delivery(self, task_id: int) -> Delivery:
        """`fetch_bytes`, with where it was read and what the worker's job said of its run
        (the worker's word, not the chain's)."""
        from .delivery import fetch_agreed

        phase = self.board.phase(task_id)
        if phase != Phase.AGREED:
            when = "ended" if phase.ended else "is"
            raise TaskRejected(f"task {task_id} {when} {phase.label}: only a task that settled "
                               "agreed has a result (workers publish their artifact only then)")
        result = self.board.result(task_id)
        secret = self._result_secret(task_id, self.spec_of(task_id))
        try:
            return fetch_agreed(self.board.announcements(task_id), result, secret_key=secret,
                                local_ok=self.local_uris, shared=self.artifacts)
        except ArtifactMissing as exc:
            raise ArtifactMissing(f"task {task_id}: {exc}") from None

    def fetch(self, task_id: int) -> dict:
        """The agreed result decoded: for a training task, the Flax `{"params": …}` tree."""
        from crowdml_compute.digest import decode_result

        return decode_result(self.fetch_bytes(task_id))


class Requester(Party):
    def publish(self, spec: JobSpec | str | Path, *, reward: int, deposit: int, workers: int,
                join_blocks: int = 20, commit_blocks: int = 20, reveal_blocks: int = 20,
                requester_coin: bool = True, trivial: tuple[bytes, ...] = (),
                spec_uri: str | None = None, confirm: Callable[[], None] | None = None) -> int:
        """Publish the spec's job and escrow `reward`; returns the task id.

        The task's Published event says where workers fetch the spec: `spec_uri` if given (it
        must serve the spec's bytes now), else the spec's artifact store (or this party's),
        where the spec is uploaded.

        With `requester_coin`, a fresh coin is committed and its opening stored first; without,
        the board derives the coin from the block that fills the roster. `confirm`, if given,
        runs once the checks pass, before anything is stored, uploaded or sent (the CLI asks
        there; raising stops the publish).
        """
        spec = as_spec(spec)
        # The terms first, before anything is stored or uploaded.
        preflight.check_amounts(
            reward=reward, deposit=deposit, workers=workers, balance=self.account.balance,
            windows={"join": join_blocks, "commit": commit_blocks, "reveal": reveal_blocks})
        uploaded_to = self.artifacts_for(spec).uri(spec.digest())
        preflight.check_spec_uri(spec_uri or uploaded_to)
        # Workers are on other machines: what the chain names must be readable there.
        preflight.check_shared_uri(spec.data_uri, "the spec's data URI", self.local_uris)
        preflight.check_shared_uri(spec_uri or uploaded_to, "the spec URI", self.local_uris,
                                   hint="pass --spec-uri, or name a store the workers can "
                                        "read (make-spec --store, or `crowdml: artifact_store:`)")
        if (spec.result_key is not None
                and self.store.result_key(bytes.fromhex(spec.result_key[2:])) is None):
            raise SpecError(f"the spec's result key {spec.result_key} was not made in "
                            f"{self.store.path}: the result would be sealed to a key this "
                            "requester cannot open; make the spec here (make-spec)")
        # Workers fetch the data from the spec's URI: check it serves the spec's bytes now.
        read_verified(spec.data_uri, spec.data_digest, cached=False)
        if spec_uri is not None:
            try:
                read_verified(spec_uri, spec.digest(), cached=False)
            except DataDigestMismatch as exc:
                raise SpecError(f"the spec URI does not serve this spec: {exc}") from None
        if confirm is not None:
            confirm()
        # Workers fetch the spec at its URI; those sharing a store with us also find it there.
        for store in {s.url: s for s in (self.artifacts, self.artifacts_for(spec))}.values():
            store.put(spec.canonical_json())
        hidden_coin = NO_DIGEST
        if requester_coin:
            opening = CoinOpening(secrets.token_bytes(32), secrets.token_bytes(32))
            hidden_coin = coin_hash(opening.coin, opening.salt)
            self.store.save_coin(self.board.chain_id, self.board.address, hidden_coin,
                                 self.account.address, opening)
        return self.board.publish(
            self.account, spec=spec.digest(), data=bytes.fromhex(spec.data_digest[2:]),
            workers=workers, deposit=deposit, reward=reward, join_blocks=join_blocks,
            commit_blocks=commit_blocks, reveal_blocks=reveal_blocks, coin_hash=hidden_coin,
            trivial=trivial, spec_uri=spec_uri or uploaded_to)

    def release_coin(self, task_id: int) -> bytes:
        """Open the stored coin once the roster is full; returns the task's coin."""
        task = self.board.check_release_coin(self.account, task_id)
        opening = self.store.coin(self.board.chain_id, self.board.address, task.coin_hash,
                                  self.account.address)
        if opening is None:
            raise MissingSecret(f"no coin opening for task {task_id} stored by "
                                f"{self.account.address} in {self.store.path}; "
                                "it cannot be released")
        self.board.release_coin(self.account, task_id, opening.coin, opening.salt)
        return self.board.coin(task_id)  # the board mixes the opening with the chain's

    def abort(self, task_id: int) -> Phase:
        return self.board.abort(self.account, task_id)


class Worker(Party):
    def __init__(self, board: Board, account, **kwargs):
        super().__init__(board, account, **kwargs)
        self._delivered: set[int] = set()  # tasks whose artifact this worker has published
        # task id → the spec `admit` passed for it: the join and the work step use that one
        # admission, so a task's checks (its canary above all) run once.
        self._admitted: dict[int, JobSpec] = {}
        self._model_ready: set[int] = set()  # tasks whose job may start (receive_model said so)

    def _start_job(self, spec: JobSpec, coin: bytes, progress: bool, devices: int | None = None):
        """Start `spec`'s job on `devices` (default: this worker's for the spec), warm or cold
        as the config says."""
        from crowdml_compute.runner import start_job

        folders = self.config.jobs_folder
        devices = self.devices_for(spec) if devices is None else devices
        if not self.config.worker.warm_jobs or progress:
            return start_job(spec, coin, progress=progress, devices=devices, job_folders=folders)
        from crowdml_compute.data import cache_root
        from crowdml_compute.warm import WarmPool

        # The process's warm children, shared by its workers; they stop with the process.
        return WarmPool.shared(cache_root()).start(spec, coin, devices=devices,
                                                   job_folders=folders)

    def check(self, task_id: int, spec: JobSpec | str | Path | None = None) -> tuple[TaskInfo, JobSpec]:
        """Everything that must hold before a deposit: policy (job allowlist, deposit, reward),
        spec and data digests, this machine's environment, and the canary if the spec has one."""
        return self.admit(*self.admission_facts(task_id, spec))

    def admission_facts(self, task_id: int, spec: JobSpec | str | Path | None = None) -> tuple:
        """What `admit` needs from the chain, read here (in the caller's thread): the task, its
        spec or the URI to fetch it from, and the board's sink."""
        return self._facts(self.board.task(task_id), spec)

    def _facts(self, task: TaskInfo, spec: JobSpec | str | Path | None) -> tuple:
        task_id = task.task_id
        if spec is not None:
            source = as_spec(spec)
        else:
            uri = self.board.spec_uri(task_id)
            # a model purchase's evaluation spec is rebuilt from the market's events: chain reads
            source = self._spec_at_uri(task, uri) if uri.startswith(ORDER_URI_SCHEME) else uri
        from ape import chain

        from .estimate import block_seconds

        return task, source, self.board.sink, block_seconds(chain)

    def _check_job_time(self, task: TaskInfo, spec: JobSpec, timing: dict, canary_seconds: float,
                        block_time: float | None) -> None:
        """Say how long the job should take here (from the canary) and refuse a task whose
        commit window it would not make: the worker would lose its whole deposit."""
        from ape.logging import logger

        from .estimate import WINDOW_SHARE, job_estimate

        estimate = job_estimate(spec.hparams, timing, canary_seconds)
        if estimate is None:
            return
        if block_time is None:
            logger.info(f"task {task.task_id}: the job should take {estimate}")
            return
        window = task.commit_blocks * block_time
        logger.info(f"task {task.task_id}: the job should take {estimate}; its commit window "
                    f"is {task.commit_blocks} blocks, about {window:.0f} s")
        if estimate.seconds > WINDOW_SHARE * window:
            raise PolicyRefused(
                f"the job should take {estimate}, more than {WINDOW_SHARE:.0%} of its commit "
                f"window ({task.commit_blocks} blocks of about {block_time:.3g} s): it would "
                "miss it and lose the deposit")

    def admit(self, task: TaskInfo, source: JobSpec | str, sink: str,
              block_time: float | None = None) -> tuple[TaskInfo, JobSpec]:
        """`check` without chain reads (`admission_facts` made them), so that it can run off the
        agent's loop: the spec fetched from its URI, the policy, the data fetched within the
        read limits, this machine's environment and the canary."""
        from crowdml_compute.child import check_environment
        from crowdml_compute.runner import check_canary

        task_id = task.task_id
        if not isinstance(source, JobSpec):  # a URI a stranger named: not a path here
            preflight.check_shared_uri(source, f"task {task_id}'s spec URI", self.local_uris)
        spec = _task_spec(task, source if isinstance(source, JobSpec)
                          else self._spec_at_uri(task, source))
        preflight.check_shared_uri(spec.data_uri, f"task {task_id}'s data URI", self.local_uris)
        if isinstance(model_uri := spec.hparams.get("model_uri"), str):  # a model to evaluate
            preflight.check_shared_uri(model_uri, f"task {task_id}'s model URI", self.local_uris)
        self.result_store()  # where an agreed result would go: refused before the deposit
        check_policy(task, spec, self.config.worker, JobRegistry(self.config.jobs_folder), sink)
        if bytes.fromhex(spec.data_digest[2:]) != task.data:
            raise DataDigestMismatch(f"the spec's data digest {spec.data_digest} is not task "
                                     f"{task_id}'s {hex32(task.data)}")
        from ape.logging import logger

        check_environment(spec.profile)  # in the interpreter of its job stack
        devices = self.devices_for(spec)
        if is_remote(spec.data_uri):  # the slow steps say what they do
            logger.info(f"task {task_id}: fetching its data from {spec.data_uri}")
        read_verified(spec.data_uri, spec.data_digest)
        if spec.canary is not None:
            logger.info(f"task {task_id}: running its canary (a short run of the job whose "
                        "digest must match the spec's) before any deposit")
            started = time.monotonic()
            canary = check_canary(spec, devices, job_folders=self.config.jobs_folder,
                                  start=lambda job, coin: self._start_job(job, coin, False,
                                                                          devices))
            seconds = time.monotonic() - started
            logger.info(f"task {task_id}: the canary matched in {seconds:.0f} s")
            self._check_job_time(task, spec, canary.timing, seconds, block_time)
        # Once every check passed (a refusal stays one line): before the deposit.
        logger.info(f"task {task_id}: the job runs on {devices} {spec.profile.platform} "
                    f"device{'s' if devices > 1 else ''} of the {self.config.worker.devices} "
                    "offered; its digest does not depend on the device count")
        self._admitted[task_id] = spec
        return task, spec

    def _admission(self, task: TaskInfo, spec: JobSpec | str | Path | None) -> JobSpec:
        """The spec this worker's one admission of `task` passed (admitting it now if none
        did): the join and the work step share it."""
        admitted = self._admitted.get(task.task_id)
        if admitted is not None and admitted.digest() == task.spec:
            return admitted
        return self.admit(*self._facts(task, spec))[1]

    def result_store(self) -> ArtifactStore:
        """This worker's own store for agreed results (`worker.result_store`, else the state
        folder's artifact store). TaskRejected if the requester could not read it from
        another machine."""
        store = ArtifactStore.own(self.config.worker, self.artifacts)
        preflight.check_shared_uri(
            store.uri(NO_DIGEST), "this worker's result store", self.local_uris,
            hint="set `crowdml: worker: result_store:` (and result_url, where others read it)")
        return store

    def devices_for(self, spec: JobSpec) -> int:
        """The devices this worker runs `spec`'s job on: the largest divisor of its
        micro_batches (1 for a job without them) within `worker.devices` and the profile's
        limit."""
        from crowdml_compute.parallel import devices_for

        micro_batches = int(spec.hparams.get("micro_batches", 1))
        return devices_for(spec.profile, micro_batches, self.config.worker.devices)

    def join(self, task_id: int, spec: JobSpec | str | Path | None = None, *,
             confirm: Callable[[int], None] | None = None, admitted: bool = False) -> None:
        """Check the task's terms, the policy, the spec and this machine, then lock the deposit.
        `confirm(deposit)`, if given, runs between the checks and the deposit (raising stops
        the join). `admitted`: `admit` already passed for this task (the agent runs it off its
        loop), so only the board's own terms are checked again."""
        task = self.check_terms(task_id)  # the one read of the task (and the board's terms)
        if not admitted:
            self._admission(task, spec)
        if confirm is not None:
            confirm(task.deposit)
        from crowdml_compute.profile import install_digest

        # Before the deposit: an upgrade before the commit can then name the version to
        # reinstall (`check_code`). The install's digest covers the profiles' and stacks'
        # data files too: a release that changes only a pin changes what this worker accepts.
        self.store.save_join(*self._key(task_id), Joined(crowdml_version(), install_digest()))
        self.board.join(self.account, task_id, checked=task)

    def check_code(self, task: TaskInfo, spec: JobSpec | str | Path | None = None) -> None:
        """UpgradedSinceJoin if this install's compute code is not the one `task`, which this
        worker joined, was made for: crowdml was upgraded since the join, and its job would be
        refused (the profile pins the code), losing the deposit. Names the version to reinstall
        from what the join recorded; a task joined from elsewhere, or by a crowdml that kept
        no record, is judged by its spec: its compute code, and its profile as this install
        knows it (built in or accepted)."""
        from crowdml_compute.profile import check_profile, compute_code_digest, install_digest

        task_id, detail = task.task_id, ""
        joined = self.store.joined(*self._key(task_id))
        if joined:
            code, made_for = install_digest(), joined.code
            if made_for == code:
                return
        else:
            code, profile = compute_code_digest(), self.spec_of(task_id, spec).profile
            made_for = profile.code
            if made_for == code:
                try:
                    check_profile(profile, self.config.worker.accept_profiles)
                    return
                except CrowdmlError:
                    detail = f" and profile {profile.name} as this install no longer has it"
        reinstall = (f"reinstall ape-crowdml=={joined.version} and run `ape crowdml agent "
                     "--drain` with it" if joined else
                     "reinstall the crowdml version that joined it and run its agent")
        until = (f"before block {task.deadline}" if task.phase == Phase.COMMIT
                 else "before its commit window closes")
        raise UpgradedSinceJoin(
            f"task {task_id} was joined under compute code {made_for[:10]}…{detail}"
            + (f" (ape-crowdml {joined.version})" if joined else "")
            + f", this install runs {code[:10]}… (ape-crowdml {crowdml_version()}) and would "
            f"refuse its job: {reinstall} to commit {until}, or the deposit is lost")

    def upgraded_since_join(self) -> dict[int, UpgradedSinceJoin]:
        """The tasks this worker joined from this folder under other compute code and has yet
        to commit to, while it still can, each with `check_code`'s refusal. Only those tasks'
        state is read from the chain."""
        from crowdml_compute.profile import install_digest

        code, me = install_digest(), self.account.address
        joins = self.store.joins(self.board.chain_id, self.board.address, me)
        refusals = {}
        for task_id in sorted(t for t, joined in joins.items() if joined.code != code):
            task = self.board.task(task_id)
            if task.phase not in (Phase.JOINING, Phase.AWAITING_COIN, Phase.COMMIT):
                continue
            if self.board.worker_status(task_id, me) != WorkerStatus.JOINED:
                continue
            try:
                self.check_code(task)
            except UpgradedSinceJoin as exc:
                refusals[task_id] = exc
        return refusals

    def check_terms(self, task_id: int) -> TaskInfo:
        """The board's own terms of joining (open seat, window, funds for the deposit and the
        gas after it): cheap, so they go before the canary."""
        from .board import check_signing_chain

        check_signing_chain()
        task = self.board.task(task_id)
        preflight.check_join(task, self.board.head + 1,
                             self.board.worker_status(task_id, self.account.address),
                             is_sink=self.account.address == self.board.sink,
                             balance=self.account.balance,
                             fee_per_gas=self.board.fee_per_gas())
        return task

    def _key(self, task_id: int) -> tuple:
        return self.board.chain_id, self.board.address, task_id, self.account.address

    def work(self, task_id: int, spec: JobSpec | str | Path | None = None, *,
             progress: bool = False) -> bytes:
        """Run the job with the task's coin and commit to the result; returns its digest.

        A result stored for the same spec and coin is reused, not recomputed: after a crash
        between storing and committing, the commitment stays the one a pending transaction
        may already carry.
        """
        return self.finish_work(self.start_work(task_id, spec, progress=progress))

    def start_work(self, task_id: int, spec: JobSpec | str | Path | None = None, *,
                   progress: bool = False) -> Work:
        """`work`'s first half: the checks, then the job started in its own process (unless a
        result is stored for this spec and coin); returns at once. `finish_work` commits."""
        # Before any training: the coin is fixed, this seat can commit, and the window is open.
        task = self.board.check_commit(self.account, task_id, preflight.MIN_BLOCKS_TO_WORK)
        self.check_code(task, spec)  # the admission would refuse an upgrade without saying why
        spec = self._admission(task, spec)  # the join's, when this worker joined it here
        coin = self.board.coin(task_id, checked=task)
        store_url = self.result_store().url
        stored = self.store.result(*self._key(task_id))
        if stored and stored.spec == task.spec and stored.coin == coin:
            return Work(task, coin, store_url, stored=(stored.result, stored.artifact))
        if not self.receive_model(task_id):
            raise ModelNotServedYet(f"task {task_id}: the seller may serve the model until block "
                                    f"{_serve_deadline(task)}; work once it did or then")
        return Work(task, coin, store_url, job=self._start_job(spec, coin, progress))

    def _order_round(self, task_id: int):
        """(market, order, task) of a model purchase's evaluation task (the task read once), or
        None for any other task."""
        uri = self.board.spec_uri(task_id)
        if not uri.startswith(ORDER_URI_SCHEME):
            return None
        from .purchase import Market

        task = self.board.task(task_id)
        market = Market(task.requester)
        order = market.order(_order_id(uri, task))
        if order.task_id != task_id:
            raise TaskRejected(f"task {task_id} is not order {order.order_id}'s current round "
                               f"(task {order.task_id})")
        return market, order, task

    def receive_model(self, task_id: int) -> bool:
        """A model purchase's evaluation: once the roster is full, present this worker's key
        (a fresh X25519 key, kept in the state folder); once the seller served the round, open
        this worker's sealed copy into the data cache. If the serve deadline passed unserved, or
        the seller served others only, record that this round's model was not served: the job
        then scores no model, as every honest worker of the round does. True once the job may
        start, False while the seller may still serve; True at once for any other task."""
        from ape.logging import logger

        from crowdml_compute.data import keep_verified
        from .delivery import unseal
        from .purchase import market_transaction

        if task_id in self._model_ready:
            return True
        found = self._order_round(task_id)
        if found is None:
            self._model_ready.add(task_id)
            return True
        market, order, task = found
        me, coin = self.account.address, self.board.coin(task_id, checked=task)
        public = market.presented_keys(order.order_id, task_id).get(me)
        secret = self.store.result_key(public) if public else None
        deadline, head = _serve_deadline(task), self.board.head
        # Read after the head: once it reached the deadline no serve can come, so what the
        # logs say then is final (a serve mined between two reads is not missed).
        boxes = market.served_boxes(order.order_id, task_id)
        if boxes is None:
            if deadline and head < deadline:
                if secret is None:  # never presented, or from another state folder
                    public = self.store.new_result_key()
                    with market_transaction(f"present a key for task {task_id}"):
                        send(market.contract, f"present a key for task {task_id}",
                             "present_key", order.order_id, public, sender=self.account,
                             refuser="the market")
                    logger.info(f"task {task_id}: key presented; the seller may serve the "
                                f"model until block {deadline}")
                return False
            logger.info(f"task {task_id}: the seller did not serve the model by its deadline: "
                        "the round scores no model")
            return self._no_model(task_id, order.model, coin)
        if me not in boxes or secret is None:
            logger.info(f"task {task_id}: the seller served the model to others only: this "
                        "worker scores no model")
            return self._no_model(task_id, order.model, coin)
        where = f"{market.model_uri(order.order_id).rstrip('/')}/0x{boxes[me].hex()}"
        try:
            sealed = read_verified(where, boxes[me], cached=False)
        except (CrowdmlError, OSError) as exc:  # not there yet, or a slow store: try again
            if task.deadline - self.board.head > max(2, task.commit_blocks // 4):
                raise ArtifactMissing(f"task {task_id}: the model served at {where}: "
                                      f"{first_line(exc)}; trying again") from None
            logger.info(f"task {task_id}: the model served at {where} never came "
                        f"({first_line(exc)}): this worker scores no model")
            return self._no_model(task_id, order.model, coin)
        try:  # the copy the chain names: one that does not open never will
            keep_verified(unseal(sealed, secret, where), order.model)
        except CrowdmlError as exc:
            logger.info(f"task {task_id}: the copy served at {where} does not open to the "
                        f"offered model ({first_line(exc)}): this worker scores no model")
            return self._no_model(task_id, order.model, coin)
        self._model_ready.add(task_id)
        return True

    def _no_model(self, task_id: int, model: bytes, coin: bytes) -> bool:
        from crowdml_compute.data import mark_unserved

        mark_unserved(model, coin)
        self._model_ready.add(task_id)
        return True

    def finish_work(self, work: Work) -> bytes:
        """`work`'s second half: wait for the job if it still runs, store its result with a
        fresh salt, then commit; returns the result digest."""
        if work.job is not None:
            job = work.job.result()
            # Kept on the Work: a store write that fails below is retried with this result,
            # never by running the job again.
            work.stored, work.summary, work.job = (job.digest, job.artifact), job.summary(), None
        result, artifact = work.stored
        self._store_then_commit(work.task, work.coin, result, artifact, work.store_url,
                                work.summary)
        return result

    def summary(self, task_id: int) -> dict | None:
        """What this worker's job said of its run on the task (transcript, each epoch's
        metrics, the final ones: `JobResult.summary`), as stored with the result."""
        return self.store.summary(*self._key(task_id))

    def commit_result(self, task_id: int, result: bytes, artifact: bytes, *,
                      store_url: str | None = None) -> None:
        """Store a fresh salt with `result`, THEN commit; `work` does this with the job's
        result. Called directly it commits anything (the demo's junk worker does)."""
        task = self.board.check_commit(self.account, task_id)
        self._store_then_commit(task, self.board.coin(task_id), result, artifact,
                                store_url or self.result_store().url)

    def _store_then_commit(self, task: TaskInfo, coin: bytes, result: bytes, artifact: bytes,
                           store_url: str, summary: dict | None = None) -> None:
        # The callers checked the seat can commit (it is JOINED): a stored opening is never
        # replaced once a commitment is on chain, for it is the only one.
        if result in self.board.common_knowledge(task):
            raise TaskRejected(f"result 0x{result.hex()} is in task {task.task_id}'s "
                               "common-knowledge set E_ck: the board counts it as no "
                               "submission, so committing it would only spend gas")
        key = self._key(task.task_id)
        stored = self.store.result(*key)
        if not (stored and stored.result == result and stored.coin == coin):
            stored = StoredResult(task.spec, coin, result, secrets.token_bytes(32), artifact,
                                  store_url)
            self.store.save_result(*key, stored, summary)
        self.board.commit(self.account, task.task_id,
                          commitment(result, stored.salt, self.account.address, task.task_id))

    def reveal(self, task_id: int) -> bytes:
        """Open the stored commitment; returns the result digest. The artifact stays here
        until the task settles agreed (`deliver`)."""
        self.board.check_reveal(self.account, task_id)
        stored = self.store.result(*self._key(task_id))
        if stored is None:
            raise MissingSecret(f"no stored salt for task {task_id} and {self.account.address} "
                                f"in {self.store.path}; the commitment cannot be opened")
        self.board.reveal(self.account, task_id, stored.result, stored.salt)
        return stored.result

    def deliver(self, task_id: int) -> bool:
        """Upload the result, with what the job said of its run, to this worker's result
        store, sealed to the spec's result key, and announce its URI on the board, if, and
        only if, the task settled AGREED on this worker's result; True once the requester can
        fetch it (here, or at a co-worker's URI serving the same sealed bytes). Any other
        outcome returned the reward to the requester, who then gets nothing from which the
        result can be rebuilt: of a DISAGREED task, only the run's summary (its transcript and
        losses, for the requester to see where the workers parted) goes out."""
        from .delivery import already_delivered, as_upload

        if task_id in self._delivered:
            return True
        phase = self.board.phase(task_id)
        if phase not in (Phase.AGREED, Phase.DISAGREED):
            return False
        stored = self.store.result(*self._key(task_id))
        summary = self.summary(task_id)
        if stored is None:
            return False
        if phase == Phase.AGREED:
            if stored.result != self.board.result(task_id):
                return False
            artifact = stored.artifact
        elif summary is None:
            return False
        else:
            artifact = b""  # the work stays here: the requester was refunded
        upload = as_upload(artifact, summary, self.spec_of(task_id).result_key)
        announcements = self.board.announcements(task_id)
        if not already_delivered(announcements, upload, local_ok=self.local_uris):
            if self.board.worker_status(task_id, self.account.address) != WorkerStatus.REVEALED:
                return False  # claimed already, or revealed no valid result: no announcement
            store = self.result_store()
            uri = store.uri(store.put(upload))
            self.board.announce(self.account, task_id, uri)
        self._delivered.add(task_id)
        return True

    def settle(self, task_id: int) -> Phase:
        phase = super().settle(task_id)
        self.try_deliver(task_id)
        return phase

    def claim(self, task_id: int) -> int:
        """Deliver the artifact first (the requester paid for it), then withdraw."""
        self.try_deliver(task_id)
        return super().claim(task_id)

    def try_deliver(self, task_id: int) -> bool:
        """`deliver`, but a store that refuses the upload (it may be down, read-only or out of
        credentials) or an announcement the board refuses never holds this worker's money
        back: the failure is logged, the artifact stays in the local store, and `deliver` can
        be called again (until this worker claims: the board then no longer counts it as a
        worker of the task)."""
        from ape.logging import logger

        try:
            return self.deliver(task_id)
        except Exception as exc:  # whatever the fsspec backend raises
            logger.warning(f"task {task_id}: could not publish the result artifact "
                           f"({first_line(exc)}); it stays in {self.store.path}, "
                           f"retry with Worker.deliver({task_id})")
            return False
