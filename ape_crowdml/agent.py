"""A worker that runs on its own: watches the board's Published events, joins the tasks its
policy accepts, works, commits, reveals as soon as the reveal phase opens, settles, publishes its
result artifact as soon as it sees the task AGREED (never for any other outcome), and claims.

Jobs run in their own processes, one at a time (each pins the CPUs its profile names): while
one trains, every other task's deadline-bound actions (join, reveal, settle, abort, claim) keep
going at each poll, so a long job never makes it miss another task's reveal window.

It keeps no state of its own beyond the Store: on restart it takes up the event scan where it
left off (the Store keeps the next block and the tasks it follows), reads its seat on each task
from `worker_status`, and reveals from the stored salt. That is what makes killing it after a
commit safe. The scan pages its log queries (`page_blocks`) and outlives a node's errors and
rate limits: a failed query is logged and retried with backoff while known tasks go on.

It leaves the chain's clock alone: it only waits for blocks. On a local chain that mines only
when a transaction arrives, a deadline then passes only when someone sends one; start anvil
with a block time (`anvil --block-time 1`) when several parties share it. `mine_when_idle`
(`--mine-when-idle`) mines a block at every idle poll while no job of its own trains, for a
chain nobody else uses: on a shared one it would close other workers' windows while they train.

An upgrade changes the compute code a spec's profile pins, so a worker that upgrades while
joined to a task would refuse its own task's job and lose the deposit. `drain` (`--drain`)
joins nothing new, carries the tasks it holds to their end, then stops: the worker upgrades
then. An agent that finds a task joined under other compute code, yet to be committed to,
refuses to start (unless draining), naming the version to reinstall: started as usual it
would join new tasks under the new code, which that reinstall would strand in turn.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from time import monotonic

from .board import Phase, WorkerStatus
from .errors import (CannotSignUnattended, CrowdmlError, EnvironmentMissing,
                     InsufficientFunds, PolicyRefused, StateNotWritable, first_line)
from .parties import Work, Worker
from .render import WORKERS_WORD, run_line, wei

WORK = "work"  # `_advance`'s answer when the task's job is due
logger = logging.getLogger(__name__)
# Admissions (the checks before a join) running at once, each in its own thread.
MAX_ADMISSIONS = 2
# A task refused for a reason its worker can fix (no job environment yet, not enough funds)
# is kept, and checked again this often, and after a restart; other refusals are final.
RECHECK_SECONDS = 60.0
FIXABLE = (EnvironmentMissing, InsufficientFunds)


class Admission:
    """A task's checks before a join (`Worker.admit`: its spec and data fetched, the policy,
    this machine's environment, the canary), run in a thread of their own: what a task's
    publisher controls (a slow server, a long canary) never holds the agent's loop, which
    keeps sending the other tasks' reveals, settles and claims meanwhile."""

    def __init__(self, worker: Worker, task_id: int, seconds: float):
        self.deadline = monotonic() + seconds
        self.seconds = seconds
        facts = worker.admission_facts(task_id)  # chain reads stay in the agent's thread
        self._outcome: dict = {}
        self._thread = threading.Thread(target=self._admit, args=(worker, facts), daemon=True,
                                        name=f"crowdml-admission-{task_id}")
        self._thread.start()

    def _admit(self, worker: Worker, facts) -> None:
        try:
            self._outcome["admitted"] = worker.admit(*facts)
        except BaseException as exc:  # noqa: BLE001 - handed to the agent's thread
            self._outcome["error"] = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def overdue(self) -> bool:
        return self.running and monotonic() > self.deadline

    def result(self):
        """The admitted (task, spec); the refusal raised as it was."""
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["admitted"]


def sign_unattended(account, *, autosign: bool) -> None:
    """Make sure `account` signs without asking anyone, or raise CannotSignUnattended.

    A keyfile account asks for its passphrase, and to confirm each transaction: with
    `autosign`, it is unlocked once with the passphrase in ape's own variable,
    APE_ACCOUNTS_<alias>_PASSPHRASE, and signs from then on without asking (ape's
    `set_autosign`). Accounts of other plugins (hardware wallets) are refused: a wallet that
    waits for a button press would leave the agent waiting past its deadlines."""
    from ape.api.accounts import TestAccountAPI
    from ape_accounts import KeyfileAccount

    if isinstance(account, TestAccountAPI):
        return
    if not isinstance(account, KeyfileAccount):
        raise CannotSignUnattended(
            f"{type(account).__name__} accounts may wait for a person to sign; the agent runs "
            "unattended: use a keyfile account (`ape accounts import`) with --autosign")
    variable = f"APE_ACCOUNTS_{account.alias}_PASSPHRASE"
    if not autosign:
        raise CannotSignUnattended(
            f"account {account.alias} would ask before signing each transaction and nobody is "
            f"there to answer: pass --autosign, with its passphrase in {variable}")
    passphrase = os.environ.get(variable)
    if not passphrase:
        raise CannotSignUnattended(f"--autosign unlocks account {account.alias} with the "
                                   f"passphrase in {variable}, which is not set")
    from ape.exceptions import AccountsError

    try:
        account.set_autosign(True, passphrase=passphrase)
    except AccountsError:  # InvalidPasswordError
        raise CannotSignUnattended(f"the passphrase in {variable} does not unlock account "
                                   f"{account.alias}") from None


# After a failed event scan, wait this long before the next, doubling up to the maximum: a
# rate-limited node is not hammered, and the agent serves its known tasks meanwhile.
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 60.0


class Agent:
    def __init__(self, worker: Worker, *, mine_when_idle: bool = False,
                 page_blocks: int | None = None, max_fee: int | None = None,
                 priority_fee: int | None = None, drain: bool = False,
                 log: Callable[[str], None] = print):
        """`page_blocks`, `max_fee` and `priority_fee` default to the config's `agent:`.
        UpgradedSinceJoin, unless `drain`, for a task joined under other compute code."""
        settings = worker.config.agent
        # Before anything is sent: the one way to save that deposit is the reinstall.
        stranded = worker.upgraded_since_join()
        if stranded and not drain:
            raise next(iter(stranded.values()))
        self.worker = worker
        self.board = worker.board
        self.board.cap_fees(settings.max_fee if max_fee is None else max_fee,
                            settings.priority_fee if priority_fee is None else priority_fee)
        self.log = log
        self.mine_when_idle = mine_when_idle
        self.drain = drain
        self.page_blocks = page_blocks or settings.page_blocks
        self._waiting_reason: str | None = None
        # Where a previous run of this account's agent left off, from the store: a restart
        # neither rescans the board nor forgets the tasks it follows.
        self._scan_key = (self.board.chain_id, self.board.address, worker.account.address)
        next_block, watching = worker.store.agent_scan(*self._scan_key)
        self.next_block = max(self.board.start_block, next_block or 0)
        self._watching: set[int] = watching
        self._retry_delay = 0.0
        self._retry_at = 0.0
        self._given_up: set[int] = set()
        self._jobs: dict[int, Work] = {}  # task id -> its job, running or done, not committed
        self._admissions: dict[int, Admission] = {}  # task id -> its checks before a join
        self._recheck_at: dict[int, float] = {}  # task id -> when a fixable refusal is retried
        self._trouble: dict[tuple, str] = {}  # (task id, action) -> the last failure said
        self.finished: list[int] = []
        # Draining: followed tasks read as not joined; they stay followed, for the upgraded
        # agent to join.
        self._unseated: set[int] = set()
        for task_id, refusal in stranded.items():  # said once here, its job never started
            self._watching.add(task_id)
            self._given_up.add(task_id)
            self.log(str(refusal))

    def _discover(self) -> None:
        """Scan new blocks for Published events, a page of `page_blocks` at a time, saving the
        place after each page. A failed query is logged and retried later, with backoff."""
        if monotonic() < self._retry_at:
            return
        try:
            head = self.board.head
            while self.next_block <= head:
                last = min(head, self.next_block + self.page_blocks - 1)
                found = self.board.published_between(self.next_block, last)
                self.worker.store.save_agent_scan(*self._scan_key, last + 1, found)
                self._watching |= found - set(self.finished)
                self.next_block = last + 1
        except Exception as exc:  # noqa: BLE001 - provider and connection errors vary by plugin
            logger.debug("event scan failed", exc_info=True)
            self._retry_delay = min(MAX_RETRY_SECONDS,
                                    max(FIRST_RETRY_SECONDS, 2 * self._retry_delay))
            self._retry_at = monotonic() + self._retry_delay
            self.log(f"event scan from block {self.next_block} failed "
                     f"({type(exc).__name__}: {first_line(exc)}); retrying in "
                     f"{self._retry_delay:g} s")
            return
        self._retry_delay = 0.0

    def _may_send(self) -> bool:
        """False, saying why once, while nothing should be sent: transactions of this account
        still pending (a previous run's, after a restart: sending now would reuse or queue
        behind their nonces, and their effect is not yet on chain to be read), or a base fee
        above the fee cap."""
        try:
            reason = self._pending_reason()
            if reason is None:
                self.board.check_fee_cap()
        except CrowdmlError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - provider and connection errors vary by plugin
            reason = f"cannot read the account's nonce ({type(exc).__name__}: {first_line(exc)})"
        if reason is not None and reason != self._waiting_reason:
            self.log(reason)
        self._waiting_reason = reason
        return reason is None

    def _pending_reason(self) -> str | None:
        from ape import chain

        address = self.worker.account.address
        count = chain.provider.web3.eth.get_transaction_count
        pending = count(address, "pending") - count(address, "latest")
        if pending <= 0:
            return None
        return (f"{pending} transaction(s) of {address} pending: waiting for them to be mined "
                "before sending more")

    def _forget(self, task_id: int) -> None:
        # The store first: a write that fails leaves the task followed, in memory and on disk.
        self.worker.store.forget_agent_task(*self._scan_key, task_id)
        self._watching.discard(task_id)

    def step(self) -> bool:
        """Advance every watched task by at most one action; True if anything was sent.

        The actions bound to a deadline (join, reveal, settle, abort, claim) go first for
        every task; then the running job, if any, is looked at (committed once done), and if
        none runs, the next job starts: the one whose commit window closes first. No call
        waits for a job, so the reveals due while one trains are sent on time.
        """
        self._discover()
        if not self._may_send():
            return False
        acted = False
        ready_to_work = []
        for task_id in sorted(self._watching - self._unseated):
            outcome = self._guarded(self._advance, task_id)
            if outcome is WORK:
                ready_to_work.append(task_id)
            else:
                acted |= bool(outcome)
        for task_id in list(self._jobs):
            acted |= bool(self._guarded(self._poll_job, task_id))
        # A model purchase's evaluation waits for its model: the key is presented (a
        # transaction bound to the serve deadline) and the sealed copy opened here.
        ready_to_work = [t for t in ready_to_work if t not in self._jobs
                         and self._guarded(self.worker.receive_model, t)]
        if ready_to_work and not self._jobs:
            task_id = min(ready_to_work, key=lambda t: self.board.task(t).deadline)
            acted |= bool(self._guarded(self._start_job, task_id))
        return acted

    def _guarded(self, action, task_id: int):
        # A long-running worker must outlive one task's trouble, a node's hiccup included:
        # log it and carry on, so that the other tasks' reveals are not missed. The same
        # trouble at every poll (a missing salt) is said once per task, not at each poll.
        # Each kind of action keeps its own trouble: one that goes well does not make another
        # one's standing trouble be said again.
        key = (task_id, action.__name__)
        try:
            outcome = action(task_id)
        except CrowdmlError as exc:
            said = str(exc)  # one that names its task already is said as it is
            self._say_once(key, said if re.match(rf"task {task_id}\b", said)
                           else f"task {task_id}: {said}")
        except Exception as exc:  # noqa: BLE001 - provider and connection errors vary by plugin
            logger.debug("agent step failed", exc_info=True)
            self._say_once(key, f"task {task_id}: {type(exc).__name__}: {first_line(exc)}")
        else:
            self._trouble.pop(key, None)
            return outcome
        return False

    def _say_once(self, key, line: str) -> None:
        if self._trouble.get(key) != line:
            self._trouble[key] = line
            self.log(line)

    def _start_job(self, task_id: int) -> bool:
        try:
            self._jobs[task_id] = self.worker.start_work(task_id)
        except CrowdmlError:
            # Refusals (canary, E_ck, policy, data) repeat on every try: give the job up, so
            # that it does not hold up the other tasks' jobs; the task is still followed.
            self._given_up.add(task_id)
            raise
        self.log(f"task {task_id}: job started")
        return True

    def _poll_job(self, task_id: int) -> bool:
        """Commit the task's job once it is done; stop it if its commit window closed. A job
        whose result cannot be stored yet (the state folder is not writable) keeps its result
        here, and the store write is retried at each step until the commit window closes."""
        work = self._jobs[task_id]
        if self.board.phase(task_id) != Phase.COMMIT:
            del self._jobs[task_id]
            what = "job stopped" if not work.done else "result dropped, never stored"
            work.cancel()
            self._given_up.add(task_id)
            self.log(f"task {task_id}: {what}: the commit window closed before it was committed")
            return True
        if not work.done:
            return False
        try:
            digest = self.worker.finish_work(work)
        except StateNotWritable:
            raise  # said once (`_guarded`); the result stays in `work` for the next step
        except CrowdmlError:
            del self._jobs[task_id]
            self._given_up.add(task_id)
            raise
        del self._jobs[task_id]
        said = run_line(self.worker.summary(task_id))
        self.log(f"task {task_id}: committed to 0x{digest.hex()}"
                 + (f"; its job says {said} ({WORKERS_WORD})" if said else ""))
        return True

    def stop_jobs(self) -> None:
        """Stop the jobs still running (their tasks' results were not committed)."""
        for task_id, work in list(self._jobs.items()):
            work.cancel()
            self.log(f"task {task_id}: job stopped")
        self._jobs.clear()

    @property
    def admitting(self) -> bool:
        """Whether checks before a join are still running."""
        return any(admission.running for admission in self._admissions.values())

    def _join(self, task_id: int) -> bool:
        """The board's terms here, then the rest of the checks in an Admission; join once it
        passed. A task whose checks fail, or outlast the policy's `check_seconds`, is
        refused: forgotten, so that it is not checked again; unless the worker can fix the
        reason (FIXABLE): that task is checked again every RECHECK_SECONDS."""
        worker = self.worker
        admission = self._admissions.get(task_id)
        if admission is None and monotonic() < self._recheck_at.get(task_id, 0.0):
            return False
        try:
            if admission is None:
                worker.check_terms(task_id)
                if len(self._admissions) >= MAX_ADMISSIONS:
                    return False  # its turn comes once a running admission ends
                self._admissions[task_id] = Admission(worker, task_id,
                                                      worker.config.worker.check_seconds)
                return False
            if admission.overdue:
                raise PolicyRefused(f"its checks did not end within {admission.seconds:g} s "
                                    "(this worker's check_seconds)")
            if admission.running:
                return False
            del self._admissions[task_id]
            admission.result()
            worker.join(task_id, admitted=True)
        except FIXABLE as exc:
            self._admissions.pop(task_id, None)
            self._recheck_at[task_id] = monotonic() + RECHECK_SECONDS
            self._say_once((task_id, "_join"), f"task {task_id}: not joining for now: {exc} "
                                               f"(checked again every {RECHECK_SECONDS:g} s)")
            return False
        except CrowdmlError as exc:
            self._admissions.pop(task_id, None)
            self._forget(task_id)
            self.log(f"task {task_id}: not joining: {exc}")
            return False
        self._recheck_at.pop(task_id, None)
        self.log(f"task {task_id}: joined")
        return True

    def _advance(self, task_id: int):
        """Send the task's next deadline-bound action; WORK when its job is due instead."""
        worker, me = self.worker, self.worker.account.address
        phase = self.board.phase(task_id)
        status = self.board.worker_status(task_id, me)
        if status == WorkerStatus.NONE:
            if phase != Phase.JOINING:
                self._admissions.pop(task_id, None)
                self._forget(task_id)
                return False
            if self.drain:
                self._unseated.add(task_id)
                return False
            return self._join(task_id)
        if phase in (Phase.JOINING, Phase.AWAITING_COIN):
            if self.board.head <= self.board.task(task_id).deadline:
                return False
            # A short roster or a withheld coin ends the task only when someone aborts it;
            # the deposit (and, for a withheld coin, a reward share) is otherwise stuck.
            self.log(f"task {task_id}: window closed, {worker.board.abort(worker.account, task_id).label}")
            return True
        if status == WorkerStatus.JOINED and phase == Phase.COMMIT:
            return False if task_id in self._given_up or task_id in self._jobs else WORK
        if status == WorkerStatus.COMMITTED and phase == Phase.REVEAL:
            digest = worker.reveal(task_id)
            self.log(f"task {task_id}: revealed 0x{digest.hex()} from the stored salt")
            return True
        if phase == Phase.SETTLEABLE:
            self.log(f"task {task_id}: settled, {worker.settle(task_id).label}")  # delivers if agreed
            return True
        if phase.ended:
            # The requester paid: its result goes out before anything else, so that it gets
            # it even if this worker goes offline after claiming. A disagreed task's requester
            # gets this worker's transcript; no other outcome uploads.
            if phase in (Phase.AGREED, Phase.DISAGREED) and worker.try_deliver(task_id):
                what = "result" if phase == Phase.AGREED else "run's transcript"
                self.log(f"task {task_id}: {what} delivered (its URI is on the board)")
            if worker.owed(task_id):
                self.log(f"task {task_id}: claimed {wei(worker.claim(task_id))} ({phase.label})")
            self._forget(task_id)
            self.finished.append(task_id)
            return True
        return False

    @property
    def live(self) -> set[int]:
        """The followed tasks this agent holds a seat on, or has yet to read (a failed read
        counts as held: a drain never stops on a task it could not see)."""
        return self._watching - self._unseated

    def run(self, *, tasks: int | None = None, poll_seconds: float = 2.0) -> None:
        """Work until `tasks` tasks have finished (forever if None); draining, until no task
        is live."""
        from ape import chain

        try:
            while tasks is None or len(self.finished) < tasks:
                acted = self.step()
                if self.drain and not self.live:
                    self.log("no live tasks: safe to upgrade")
                    break
                if not acted:
                    # Not while a job trains: the blocks would close its own commit window.
                    if self.mine_when_idle and not self._jobs:
                        chain.mine(1)
                    time.sleep(poll_seconds)
        finally:
            self.stop_jobs()  # warm children idle then; they stop with the process
