"""Helpers shared by the plugin, CLI and agent tests: a digits dataset and a tiny training spec
(a real job, one epoch of a 16-unit MLP: a few seconds per run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ape_crowdml.config import crowdml_config
from crowdml_compute.data import export_digits
from crowdml_compute.spec import make_spec, save_spec
from ape_crowdml.parties import deploy_board

TINY_HPARAMS = {"hidden": [16], "epochs": 1, "batch_size": 128}
DEPOSIT = 2 * 10**16
REWARD = 10**16


def tiny_spec_file(folder: Path, job: str | Path = "jobs/train_classifier.py", **hparams) -> Path:
    data = folder / "digits.npz"
    if not data.exists():
        export_digits(data)
    spec = make_spec(job, data, {**TINY_HPARAMS, **hparams})
    return save_spec(spec, folder / "spec.json")


def sealed_spec(bucket, folder: Path, state_folder: Path, hparams: dict = TINY_HPARAMS):
    """A requester's training spec as between strangers: the digits served from its own
    `bucket` (tests/store_server.py), its result key made in `state_folder`. Returns (the spec,
    the key's public half, the spec's own URL in the bucket)."""
    from ape_crowdml.store import Store

    local = folder / "digits.npz"
    export_digits(local)
    key = Store(state_folder).new_result_key()
    spec = make_spec("train_classifier", local, hparams,
                     data_uri=bucket.serve("digits.npz", local.read_bytes()),
                     result_key="0x" + key.hex())
    return spec, key, bucket.serve("spec.json", spec.canonical_json())


def isolated_config(folder: Path):
    """The project's crowdml config with state and artifacts under `folder`."""
    return crowdml_config().model_copy(update={"state_folder": folder / "state"})


# The plugin-level suites' fixtures (imported by name: tests/conftest.py's `board` is the raw
# contract): a crowdml config of the test's own, and a board deployed through the plugin.
@pytest.fixture
def config(tmp_path):
    return isolated_config(tmp_path)


@pytest.fixture
def board(accounts, config):
    return deploy_board(accounts[0], config=config)


def step_admitted(agent, timeout: float = 120) -> bool:
    """One agent step, then more until no check before a join is running (they run off the
    agent's loop, so the join they allow comes a step later); True if any step sent something."""
    import time

    deadline = time.monotonic() + timeout
    acted = agent.step()
    while agent.admitting:
        assert time.monotonic() < deadline, "the checks before a join did not end"
        time.sleep(0.05)
    return agent.step() or acted
