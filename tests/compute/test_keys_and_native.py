"""The compute package's parts that need jax in this process (the job stack's): keys from the
coin, the pytree encoding with and without jax, and the native-build checks of the libraries
this process has loaded."""

from __future__ import annotations

import os

import numpy as np
import pytest

from crowdml_compute import digest
from crowdml_compute.errors import EnvironmentMismatch
from crowdml_compute.profile import PROFILES, check_environment


def test_every_bit_of_the_coin_changes_the_base_key():
    import jax

    from crowdml_compute.keys import base_key

    coin = bytes(range(32))
    keys = {jax.random.key_data(base_key(coin)).tobytes()}
    for bit in range(256):
        flipped = bytearray(coin)
        flipped[bit // 8] ^= 1 << (bit % 8)
        keys.add(jax.random.key_data(base_key(bytes(flipped))).tobytes())
    assert len(keys) == 257


def test_key_stream_hands_out_counters_in_order():
    import jax

    from crowdml_compute.keys import KeyStream, draw

    stream = KeyStream(bytes(32))
    first = stream.next()
    assert stream.reserve(5) == 1 and stream.ctr == 6
    data = jax.random.key_data
    assert (data(first) == data(draw(stream.base, 0))).all()
    assert str(jax.random.key_impl(first)) == "threefry2x32"


def test_native_build_code_and_cpu_count_are_checked():
    import jax  # noqa: F401 - maps libjax_common.so into this process

    from crowdml_compute.profile import _loaded_native

    profile = PROFILES["cpu-exact"]  # this process runs its job stack
    check_environment(profile)
    assert set(_loaded_native(profile)) == set(profile.native)
    rebuilt = profile.model_copy(update={"native": {**profile.native,
                                                    "jaxlib/libjax_common.so": "00" * 32}})
    with pytest.raises(EnvironmentMismatch, match="not the build"):
        check_environment(rebuilt)
    with pytest.raises(EnvironmentMismatch, match="compute code"):
        check_environment(profile.model_copy(update={"code": "0x" + "11" * 32}))
    with pytest.raises(EnvironmentMismatch, match="Python 3.99"):
        check_environment(profile.model_copy(update={"python": "3.99"}))
    wide = profile.model_copy(update={"cpu_threads": len(os.sched_getaffinity(0)) + 1})
    with pytest.raises(EnvironmentMismatch, match="CPUs"):
        check_environment(wide)


def test_a_plain_tree_encodes_without_jax_as_jax_flattens_it():
    """The plugin (no jax) encodes dicts, lists and tuples of arrays itself; the bytes are the
    ones jax's flattening gives, and a tree of other nodes still goes through jax."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    tree = {"params": {"Dense_0": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                                   "bias": np.zeros(4, np.int32)},
                       "Dense_10": {"b": np.float32(2)}},
            "list": [np.arange(3), (np.ones(2), None)], "none": None, "flag": True, "n": 7}
    via_jax = {digest._path_string(path): digest._little_endian(np.asarray(leaf))
               for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    plain = digest._plain_leaves(tree)
    assert plain.keys() == via_jax.keys()
    for name, leaf in plain.items():
        encoded = digest._little_endian(np.asarray(leaf))
        assert (encoded.dtype, encoded.tobytes()) == (via_jax[name].dtype, via_jax[name].tobytes())
    with pytest.raises(digest._NotPlain):
        digest._plain_leaves({"x": jnp.ones(2)})  # a jax array: jax's own flattening
    assert digest.encode_pytree({"x": jnp.ones(2)}) == digest.encode_pytree({"x": np.ones(2, np.float32)})
