"""A test job as slow as its test wants: it waits until the file its hparams name exists, then
returns a fixed bitstring. The agent's tests use it to hold a job running across another task's
reveal window, without guessing at timings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field

from crowdml_compute.digest import encode_bits
from crowdml_compute.spec import HParams


class Config(HParams):
    release: str  # the job ends once this file exists
    timeout: float = Field(120, gt=0)  # seconds; a test that never releases it fails, not hangs


def run(hparams: dict, data: dict[str, np.ndarray], keys, report) -> bytes:
    config = Config(**hparams)
    deadline = time.monotonic() + config.timeout
    while not Path(config.release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{config.release} did not appear within {config.timeout} s")
        time.sleep(0.05)
    return encode_bits(np.array([1, 0, 1, 1]))
