"""Coin → keys: the paper's h(r‖ctr) on JAX's counter-based PRNG.

The on-chain coin r is 32 bytes. `base_key(r)` folds all eight big-endian uint32 words of r into a
threefry key, so every bit of r matters. Each random draw of a job then uses
`draw(base, ctr) = fold_in(base, ctr)` with a counter the job advances; `KeyStream` hands the
counters out in order so a job never reuses one.

Only jobs (in the child process, see runner.py) call this; it imports jax lazily so that
`import ape_crowdml` stays light.
"""

from __future__ import annotations

COIN_BYTES = 32

# Set explicitly rather than relying on defaults: a future JAX default change (the partitionable
# flag already flipped once) would otherwise silently change every result. The job's process
# inherits no JAX_* variables (profile.environment_for); the numerics-relevant settings a variable
# could have changed are set here too, and no persistent compilation cache is used: an executable
# compiled under other settings would be loaded as is (a warm process's private one aside, below).
JAX_CONFIG = {
    "jax_default_prng_impl": "threefry2x32",
    "jax_threefry_partitionable": True,
    "jax_enable_x64": False,
    "jax_random_seed_offset": 0,
    "jax_disable_jit": False,
    "jax_disable_most_optimizations": False,
    "jax_numpy_dtype_promotion": "standard",
    "eager_constant_folding": False,
    "jax_enable_compilation_cache": False,
    "jax_compilation_cache_dir": None,
}
# A warm job process (warm.py) keeps the programs it compiled in a folder of its own, made when
# it starts and removed when it stops: a later job with the same program (a task's same spec
# with another coin, a canary) loads it instead of compiling again (measured: a second tiny
# MLP job 4.1 s of CPU cold, 0.5 s warm; digests equal, tests/jobs/test_jobs_warm.py). No other
# process's programs can be found there, and the cache holds executables only (not XLA's
# autotuning results). jax caps a cache's size only with the filelock package, which the job
# stacks do not hold: warm.py empties the folder between jobs past PRIVATE_CACHE_MAX_BYTES.
PRIVATE_CACHE_MAX_BYTES = 256 * 2**20


def private_compile_cache(folder) -> dict:
    """The jax settings of a process-private compilation cache in `folder`."""
    return {
        "jax_enable_compilation_cache": True,
        "jax_compilation_cache_dir": str(folder),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        "jax_persistent_cache_enable_xla_caches": "none",
    }


# flax's settings that change names or random streams, and so parameter bytes.
FLAX_CONFIG = {
    "flax_fix_rng_separator": False,
    "flax_preserve_adopted_names": False,
    "flax_return_frozendict": False,
}


def configure_jax(extra: dict | None = None, flax_extra: dict | None = None) -> None:
    """Apply JAX_CONFIG and FLAX_CONFIG (with a profile's `extra` and `flax_extra` settings)
    before any key is made."""
    import flax
    import jax

    for name, value in {**JAX_CONFIG, **(extra or {})}.items():
        jax.config.update(name, value)
    for name, value in {**FLAX_CONFIG, **(flax_extra or {})}.items():
        flax.config.update(name, value)


def coin_from_hex(text: str) -> bytes:
    """Parse a `0x`-prefixed 64-hex-digit coin; ValueError names the problem."""
    digits = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        coin = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"coin {text!r} is not hex") from None
    if len(coin) != COIN_BYTES:
        raise ValueError(f"coin must be {COIN_BYTES} bytes (64 hex digits), got {len(coin)}")
    return coin


def base_key(coin: bytes):
    """A typed threefry key that depends on all 256 bits of `coin`."""
    import jax
    import numpy as np

    if len(coin) != COIN_BYTES:
        raise ValueError(f"coin must be {COIN_BYTES} bytes, got {len(coin)}")
    key = jax.random.key(0, impl="threefry2x32")
    for word in np.frombuffer(coin, dtype=">u4"):
        key = jax.random.fold_in(key, np.uint32(word))
    return key


def draw(base, ctr):
    """The key for draw number `ctr`: h(r‖ctr). `ctr` may be a traced value inside jit."""
    import jax

    return jax.random.fold_in(base, ctr)


class KeyStream:
    """Hands out counters in order, so each draw of a job gets its own key.

    `next()` gives one key; `reserve(n)` gives the first of n consecutive counters for a jitted
    loop that calls `draw(stream.base, first + i)` itself.
    """

    def __init__(self, coin: bytes):
        self.coin = coin  # what a job may key a chain fact by (crowdml_compute/data.py unserved_model)
        self.base = base_key(coin)
        self.ctr = 0

    def next(self):
        key = draw(self.base, self.ctr)
        self.ctr += 1
        return key

    def reserve(self, n: int) -> int:
        first = self.ctr
        self.ctr += n
        return first
