"""Exact arithmetic's parts (crowdml_compute/exact.py), in this process: accuracy per slice count, the
two slice paths' agreement, no int32 overflow on long sums, the fixed tree staying a tree after
XLA, layers with flax's parameter trees, and the guard rails that refuse bad input in one line."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from crowdml_compute import exact
from crowdml_compute.errors import SpecError
from crowdml_compute.profile import PROFILES
from crowdml_compute.spec import check_arithmetic, make_spec
from crowdml_compute.parallel import devices_for

RNG = np.random.default_rng(0)
A = RNG.standard_normal((64, 300)).astype(np.float32)
B = (RNG.standard_normal((300, 48)) * 0.05).astype(np.float32)
REFERENCE = A.astype(np.float64) @ B.astype(np.float64)


def relative_error(result) -> float:
    return float(np.abs(np.asarray(result, np.float64) - REFERENCE).max()
                 / np.abs(REFERENCE).max())


@pytest.mark.parametrize("slices, bound", [(1, 3e-2), (2, 1e-3), (3, 1e-5)])
def test_matmul_error_shrinks_with_each_slice(slices, bound):
    assert relative_error(exact.matmul(A, B, slices)) < bound
    assert relative_error(exact.dense_product(A, B, slices)) < bound * 4  # kernel scaled whole


def test_gradients_are_the_float_gradients_within_the_slices_precision():
    def loss(product):
        return lambda a, b: jnp.sum(jnp.tanh(product(a, b)) ** 2)

    want = jax.grad(loss(jnp.matmul), argnums=(0, 1))(A, B)
    for product in (lambda a, b: exact.matmul(a, b, 3), lambda a, b: exact.dense_product(a, b, 3)):
        got = jax.grad(loss(product), argnums=(0, 1))(A, B)
        for g, w in zip(got, want):
            assert float(jnp.abs(g - w).max() / jnp.abs(w).max()) < 1e-4


def test_int8_and_float32_paths_give_the_same_bits():
    exact.self_test(2)  # raises on this machine if not
    results = {}
    # K above the float32 path's chunk: its pieces are added as integers
    a = RNG.standard_normal((16, exact.FLOAT32_TERMS * 2 + 5)).astype(np.float32)
    for path in exact.PATHS:
        exact.use_path(path)
        try:
            results[path] = np.asarray(jax.jit(lambda a: exact.matmul(a, a.T, 2))(a))
        finally:
            exact.use_path("int8")
    assert results["int8"].tobytes() == results["float32"].tobytes()


def test_a_contraction_beyond_int32_is_cut_into_chunks_not_overflowed():
    """100,000 terms: the level-1 products (127·111 twice per term) sum to 2.8e9, past int32."""
    k = 100_000
    a = np.full((2, k), 0.999, np.float32)
    got = np.asarray(exact.matmul(a, a.T, 2))
    assert np.allclose(got, k * 0.999 ** 2, rtol=1e-4), got
    # the control: that level as one int32 dot wraps around
    parts, _ = exact._split(jnp.asarray(a), 1, 2)
    one_dot = jax.lax.dot(jnp.concatenate([parts[0], parts[1]], 1),
                          jnp.concatenate([parts[1], parts[0]], 1).T,
                          preferred_element_type=jnp.int32)
    wide = [np.asarray(p[0], np.int64) for p in parts]
    assert int(one_dot[0, 0]) != 2 * int(wide[0] @ wide[1])


def test_subnormal_inputs_count_as_zero():
    tiny = np.float32(1e-40)  # subnormal
    a = A.copy()
    a[0, :5] = tiny
    zeroed = A.copy()
    zeroed[0, :5] = 0
    assert (np.asarray(exact.matmul(a, B, 2)).tobytes()
            == np.asarray(exact.matmul(zeroed, B, 2)).tobytes())


def hlo_reduces(fn, x) -> int:
    text = jax.jit(fn).lower(x).compile().as_text()
    return len(re.findall(r"\breduce\(", text))


def test_the_fixed_tree_stays_a_tree_after_xla():
    x = jnp.asarray(RNG.standard_normal((1000, 7)).astype(np.float32))
    assert hlo_reduces(lambda x: exact.tree_sum(x, 0), x) == 0
    # the control: a plain sum compiles to a reduce, whose order the kernel chooses
    assert hlo_reduces(lambda x: jnp.sum(x, 0), x) > 0
    assert np.allclose(exact.tree_sum(x, 0), np.asarray(x, np.float64).sum(0), atol=1e-4)


def float_sums(jaxpr) -> list[str]:
    """Primitives of a jaxpr (nested ones too) that sum floats in an order XLA chooses."""
    found = []
    for eqn in jaxpr.eqns:
        floats = any(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.invars
                     if hasattr(v.aval, "dtype"))
        if eqn.primitive.name == "reduce_sum" and floats:
            shape = eqn.invars[0].aval.shape
            if any(shape[axis] > 1 for axis in eqn.params["axes"]):  # one term is no sum
                found.append(f"reduce_sum over {shape}")
        if eqn.primitive.name in ("cumsum", "reduce_window_sum", "conv_general_dilated") \
                and floats:
            found.append(eqn.primitive.name)
        if eqn.primitive.name == "dot_general" and floats:
            found.append("dot_general")
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (list, tuple)) else [param]):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    found += float_sums(getattr(inner, "jaxpr", inner))
    return found


def conv_net(numerics: exact.Arithmetic):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = numerics.avg_pool(nn.relu(numerics.Conv(4)(x)), 2)
            x = nn.relu(numerics.Dense(16)(x.reshape((x.shape[0], -1))))
            return numerics.Dense(10)(x)

    return Net()


def test_an_exact_training_gradient_has_no_float_reduction_or_float_dot():
    """Every sum of an exact model's loss gradient is an integer dot or the fixed tree."""
    x, y = jnp.ones((8, 8, 8, 1)), jnp.arange(8) % 10
    for numerics, expect_clean in ((exact.Arithmetic("exact"), True),
                                   (exact.Arithmetic("float"), False)):  # the control
        net = conv_net(numerics)
        params = net.init(jax.random.key(0), x)

        def loss(p):
            return numerics.cross_entropy(net.apply(p, x), y)

        sums = float_sums(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
        assert (sums == []) == expect_clean, sums


def test_exact_layers_have_flax_parameter_trees_and_outputs():
    x = jnp.asarray(RNG.standard_normal((4, 9, 9, 3)).astype(np.float32))
    for ours, flax_layer in ((exact.Dense(5, slices=3), nn.Dense(5)),
                             (exact.Conv(5, (3, 3), slices=3), nn.Conv(5, (3, 3)))):
        mine, theirs = ours.init(jax.random.key(1), x), flax_layer.init(jax.random.key(1), x)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(
            lambda a, b: a.shape == b.shape and bool((a == b).all()), mine, theirs))
        assert float(jnp.abs(ours.apply(mine, x) - flax_layer.apply(theirs, x)).max()) < 1e-4
    assert float(jnp.abs(exact.avg_pool(x) - nn.avg_pool(x, (2, 2), strides=(2, 2))).max()) < 1e-6
    in_a_model = conv_net(exact.Arithmetic("exact")).init(jax.random.key(0), x)["params"]
    assert sorted(in_a_model) == ["Conv_0", "Dense_0", "Dense_1"]


def test_a_models_init_keeps_the_parameter_bits_of_flax_init_outside_jit():
    """Arithmetic.init (one compiled program; exact layers skip their product while init
    runs) gives the bits flax's init gives called outside jit, as jobs called it before, with
    the product run, for the exact and the float forms of a model. (Fully op by op, under
    `jax.disable_jit`, the initialisers' erf_inv rounds otherwise: the programs differ.)"""
    x = jnp.asarray(RNG.standard_normal((2, 8, 8, 1)).astype(np.float32))
    theirs = conv_net(exact.Arithmetic("float")).init(jax.random.key(5), x)
    for numerics in (exact.Arithmetic("exact"), exact.Arithmetic("float")):
        ours = numerics.init(conv_net(numerics), jax.random.key(5), x)
        leaves = jax.tree_util.tree_leaves_with_path
        assert [(p, np.asarray(a).tobytes()) for p, a in leaves(ours)] == [
            (p, np.asarray(a).tobytes()) for p, a in leaves(theirs)], numerics.kind


@pytest.mark.parametrize("bad, reason", [
    (np.array([1.0, np.nan], np.float32), "NaN or infinite"),
    (np.array([1.0, np.inf], np.float32), "NaN or infinite"),
    (np.array([2.0 ** 70], np.float32), "magnitude 2\\*\\*64"),
])
def test_inputs_exact_arithmetic_cannot_take_are_refused_in_one_line(bad, reason):
    with pytest.raises(SpecError, match=reason) as refused:
        exact.Arithmetic("exact").check_inputs(x_train=bad)
    assert "\n" not in str(refused.value)
    exact.Arithmetic("float").check_inputs(x_train=bad)  # float takes what it is given


def test_slice_counts_outside_one_to_four_are_refused():
    with pytest.raises(SpecError, match="exact_slices must be 1 to 4"):
        exact.Arithmetic("exact", 5)


def test_portable_profiles_take_exact_specs_only(tmp_path):
    from crowdml_compute.data import export_digits

    export_digits(tmp_path / "digits.npz")
    spec = make_spec("train_classifier", tmp_path / "digits.npz", {"epochs": 1})
    assert spec.profile.name == "cpu-portable" and spec.hparams["arithmetic"] == "exact"
    with pytest.raises(SpecError, match="runs only jobs with exact arithmetic"):
        make_spec("train_classifier", tmp_path / "digits.npz", {"arithmetic": "float"},
                  profile="cpu-portable")
    float_spec = make_spec("train_classifier", tmp_path / "digits.npz", {"arithmetic": "float"})
    assert float_spec.profile.name == "cpu-exact"  # float arithmetic keeps the pinned profile
    with pytest.raises(SpecError, match="this spec's is float"):
        check_arithmetic(float_spec.model_copy(update={"profile": PROFILES["cpu-portable"]}))


def test_portable_profiles_pin_no_threads_and_allow_any_device_count():
    portable = PROFILES["cpu-portable"]
    assert portable.cpu_threads is None and portable.xla_threads is None
    assert portable.xla_flags == () and "DNNL_MAX_CPU_ISA" not in portable.env
    assert devices_for(portable, 16, 16) == 16
    assert devices_for(PROFILES["gpu-portable"], 8, 8) == 8
