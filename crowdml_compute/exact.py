"""Exact arithmetic for jobs: products and sums whose bits do not depend on the machine.

Honest workers must agree bit for bit, and a float32 matmul does not promise that: its kernel
(Eigen, oneDNN, YNNPACK, cuBLAS) chooses the order in which it adds the K products of a dot, by
thread count, ISA, cache sizes and device. Float addition is not associative, so each order
gives other bits. Integer addition is. So every sum whose order a kernel could choose goes
through integers here:

- `matmul(a, b, slices)`: each float32 operand is cut into `slices` 7-bit integer slices
  (values in −127 … 127) under a power-of-two scale per row of `a` and per column of `b`; slice
  products are `int8 × int8 → int32` dots (exact, in any order, on any kernel or device); the
  float result is rebuilt from them in a fixed order, scaled by powers of two only (exact). As
  in the Ozaki scheme, the products of slices i·j with i + j ≥ slices are skipped: they are
  below the precision the slices keep. A custom gradient sends both backward products
  (δ·Bᵀ and Aᵀ·δ, the sum over the batch) through `matmul` again.
- `tree_sum(x, axis)`: a fixed pairwise tree of elementwise adds (XLA keeps elementwise adds
  as written; a `reduce` it may reorder). `mean`, `softmax_cross_entropy`, `avg_pool` and the
  bias gradient (`add_bias`: autodiff would sum δ over the batch with a `reduce`) use it.
- Flax layers `Dense` and `Conv` with `nn.Dense`'s and `nn.Conv`'s parameter names, shapes and
  initialisers (a model of them has the same parameter tree, so digests, `decode_pytree` and
  evaluation keep their form). `Conv` is an im2col product: shifted copies of the input (data
  movement, exact) times the kernel through `matmul`.

Elementwise operations (relu, exp, log, Adam's update) stay plain float: one operation on one
element has one correctly defined result under a given compiler, and the job stack pins the
compiler (jaxlib). What this module does not fix is that XLA version's elementwise code.

The same slices held in float32 give the same integers (every partial sum of a chunk stays
below 2**24): `path="float32"` computes them that way, the form a GPU's float units run, and
`self_test` checks on this machine that both paths agree bit for bit.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from .errors import EnvironmentMismatch, SpecError

SLICE_BITS = 7
SLICE_MAX = (1 << SLICE_BITS) - 1  # 127: slices fit int8 without its −128
MAX_SLICES = 4
# The jobs' default slice counts (README "Exact arithmetic" has the accuracy and time of each):
# training with 1 slice kept the digits MLP's and conv job's test accuracy within 1 point of
# float (bench/exact.py) at 1.23x float's time (2 slices: 1.73x); evaluation, which decides a
# purchase, keeps 2 (within 1.05x of float).
EXACT_SLICES = 1
EVALUATION_SLICES = 2
# The most terms one int32 dot may sum: each is at most 127² = 16129, so 65536 of them stay
# below 2**31 (1.06e9). A longer contraction is cut into chunks of this many terms, whose exact
# integers are turned to float32 and added in chunk order.
INT32_TERMS = 1 << 16
# The most terms a float32 dot of slices may sum with every partial sum an exact integer
# (below 2**24): 1040 · 16129 < 2**24. The float32 path cuts its chunks again at this size and
# adds the pieces as int32, so it yields the int8 path's integers.
# The most terms a float32 dot of slices may sum with every partial sum an exact integer
# (below 2**24): 1024 · 127² < 2**24. The float32 path cuts its chunks again at this size and
# adds the pieces as int32, so it yields the int8 path's integers.
FLOAT32_TERMS = 1024
# Inputs a job feeds to exact layers must stay far from float32's exponent limits, so that
# the power-of-two scalings never overflow or fall into subnormals (which GPUs flush to zero).
MAX_INPUT_EXPONENT = 64
PATHS = ("int8", "float32")
_path = "int8"


def use_path(path: str) -> None:
    """How slice products are computed in this process (both give the same bits)."""
    global _path
    if path not in PATHS:
        raise SpecError(f"exact path {path!r} is not one of {', '.join(PATHS)}")
    _path = path


def check_slices(slices: int) -> int:
    if not 1 <= slices <= MAX_SLICES:
        raise SpecError(f"exact_slices must be 1 to {MAX_SLICES}, not {slices}")
    return slices


def check_inputs(x, name: str = "input") -> None:
    """Refuse (SpecError, one line) data an exact job cannot take: NaN or infinite values, or
    magnitudes of 2**64 and more. Run on host values before training."""
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise SpecError(f"{name} holds NaN or infinite values; exact arithmetic refuses them")
    if x.size and float(np.max(np.abs(x))) >= 2.0 ** MAX_INPUT_EXPONENT:
        raise SpecError(f"{name} holds values of magnitude 2**{MAX_INPUT_EXPONENT} or more; "
                        "scale the data")


def _power_of_two(exponent):
    """2**exponent as float32, built from its bits (exact; exponent in −126 … 127)."""
    biased = jnp.clip(exponent + 127, 1, 254).astype(jnp.int32)
    return lax.bitcast_convert_type(biased << 23, jnp.float32)


def _split(x, axis: int | None, slices: int):
    """(the integer slices of x, a list, in the slice path's dtype; the exponent e, one per row
    (axis=1), column (axis=0) or for the whole array (None), with |x| < 2**e there).

    x ≈ Σ_i slice_i · 2**(e − 7(i+1)): r = x · 2**−e (|r| < 1), then per slice r·128 is
    rounded to the nearest integer within ±127 and r keeps the remainder (exact: scaling by
    powers of two and taking a float's fractional part). Later slices are balanced around
    zero (mostly within ±64), so the skipped products of low slices carry no bias."""
    x = x.astype(jnp.float32)
    # Subnormal values are zero on GPUs and on CPUs flushing them: make them zero everywhere
    # (the comparison holds whether or not this machine flushes them).
    magnitude = jnp.abs(x)
    normal = magnitude >= jnp.finfo(jnp.float32).tiny
    x, magnitude = jnp.where(normal, x, 0.0), jnp.where(normal, magnitude, 0.0)
    # max of non-negative floats is exact in any order; |x| < 2**e for e = the largest
    # magnitude's biased exponent − 126 (0 or a normal number, so its bits give it).
    biggest = jnp.max(magnitude, axis=axis, keepdims=True)
    exponent = (lax.bitcast_convert_type(biggest, jnp.int32) >> 23) - 126
    r = x * _power_of_two(-exponent)  # |r| < 1, exact
    parts = []
    for _ in range(slices):
        r = r * float(1 << SLICE_BITS)
        q = jnp.clip(jnp.round(r), -SLICE_MAX, SLICE_MAX)
        parts.append(q.astype(_slice_dtype()))
        r = r - q  # exact: the fractional remainder of a float
    exponent = exponent.reshape(-1) if axis is None else jnp.squeeze(exponent, axis)
    return parts, exponent


def _chunks(k: int, terms: int, pairs: int) -> list[tuple[int, int]]:
    """Fixed cuts of a contraction of length k so that `pairs` slice products of each chunk sum
    at most `terms` terms; they depend on the shapes only."""
    size = max(1, terms // pairs)
    return [(start, min(start + size, k)) for start in range(0, k, size)]


def _dims(b_contract: int):
    return (((1,), (b_contract,)), ((), ()))


def _int_dot(a, b, b_contract: int = 0):
    """a (M×K) times b, K×N (b_contract 0) or N×K (1), as exact int32. Written as a dot_general
    rather than with a transposed operand: XLA CPU runs int8 dots of these two forms in its
    fast kernels, and a transposed operand in a loop 25× slower (measured)."""
    return lax.dot_general(a, b, _dims(b_contract), preferred_element_type=jnp.int32)


def _cut(b, lo: int, hi: int, b_contract: int):
    return b[lo:hi] if b_contract == 0 else b[:, lo:hi]


def _float_dot(a, b, b_contract: int = 0):
    """The same integers through float32 dots: pieces short enough to sum exactly, then int32."""
    total = None
    for lo, hi in _chunks(a.shape[1], FLOAT32_TERMS, 1):
        piece = lax.dot_general(a[:, lo:hi], _cut(b, lo, hi, b_contract), _dims(b_contract),
                                precision=lax.Precision.HIGHEST,
                                preferred_element_type=jnp.float32).astype(jnp.int32)
        total = piece if total is None else total + piece
    return total


def _level(a_parts, b_parts, level: int, lo: int, hi: int, path: str, b_contract: int = 0):
    """Σ_i a_i · b_(level−i) over contraction terms lo … hi − 1, as exact int32."""
    dot = _int_dot if path == "int8" else _float_dot
    pairs = [(a_parts[i][:, lo:hi], _cut(b_parts[level - i], lo, hi, b_contract))
             for i in range(level + 1)]
    rows, cols = a_parts[0].shape[0], b_parts[0].shape[1 - b_contract]
    if path == "int8" and level and hi - lo < min(rows, cols):
        # A short sum into a large output (a weight gradient: the sum over a batch): one dot
        # over the pairs laid end to end writes the output once (measured 1.4× faster).
        return dot(jnp.concatenate([a for a, _ in pairs], 1),
                   jnp.concatenate([b for _, b in pairs], b_contract), b_contract)
    total = None
    for a, b in pairs:
        product = dot(a, b, b_contract)
        total = product if total is None else total + product
    return total


def _rebuild(a_parts, a_exp, b_parts, b_exp, slices: int, path: str, b_contract: int = 0):
    """The float32 product of a (M×K) and b (K×N, or N×K with b_contract 1) from both operands'
    slices: levels (i + j) below `slices` only, each an exact integer per chunk, scaled and
    added in a fixed order; then the rows' and columns' powers of two."""
    k = a_parts[0].shape[1]
    result = None
    for level in range(slices):
        weight = float(2.0 ** (-SLICE_BITS * (level + 2)))
        for lo, hi in _chunks(k, INT32_TERMS, level + 1):
            term = _level(a_parts, b_parts, level, lo, hi, path, b_contract)
            term = term.astype(jnp.float32) * weight
            result = term if result is None else result + term
    if result is None:  # k == 0
        result = jnp.zeros((a_parts[0].shape[0], b_parts[0].shape[1 - b_contract]), jnp.float32)
    return result * _power_of_two(a_exp)[:, None] * _power_of_two(b_exp)[None, :]


def _slice_dtype(path: str | None = None):
    """The dtype slices are held in for `path` (default: this process's)."""
    return jnp.int8 if (path or _path) == "int8" else jnp.float32


def _transposed_product(a, g, slices: int):
    """aᵀ (K×M) @ g (M×N): the sum over M (a batch) with aᵀ scaled per row and g per column.
    aᵀ is cut from a's transpose, so its slices are laid out for the fast dot."""
    a_parts, a_exp = _split(a.T, 1, slices)
    g_parts, g_exp = _split(g, 0, slices)
    return _rebuild(a_parts, a_exp, g_parts, g_exp, slices, _path)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(a, b, slices: int = 2):
    """a (M×K) @ b (K×N) in float32, the same bits on any machine (see the module's text): a
    scaled per row, b per column."""
    a_parts, a_exp = _split(a, 1, slices)
    b_parts, b_exp = _split(b, 0, slices)
    return _rebuild(a_parts, a_exp, b_parts, b_exp, slices, _path)


def _matmul_forward(a, b, slices):
    return matmul(a, b, slices), (a, b)


def _matmul_backward(slices, saved, g):
    a, b = saved
    g_parts, g_exp = _split(g, 1, slices)
    b_parts, b_exp = _split(b, 1, slices)  # bᵀ scaled per column: b per row
    da = _rebuild(g_parts, g_exp, b_parts, b_exp, slices, _path, b_contract=1)
    return da, _transposed_product(a, g, slices)


matmul.defvjp(_matmul_forward, _matmul_backward)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_product(x, kernel, slices: int = 2):
    """x (M×K) @ kernel (K×N) as `matmul`, but the kernel scaled as a whole: its one set of
    slices serves the forward product and δ·kernelᵀ in the gradient (cutting a K×N kernel is
    the costliest part of a small batch's product, and weights of one layer share a range)."""
    return _dense_forward(x, kernel, slices)[0]


def _dense_forward(x, kernel, slices):
    x_parts, x_exp = _split(x, 1, slices)
    k_parts, k_exp = _split(kernel, None, slices)
    y = _rebuild(x_parts, x_exp, k_parts, k_exp, slices, _path)
    return y, (x, k_parts, k_exp)


def _dense_backward(slices, saved, g):
    x, k_parts, k_exp = saved
    g_parts, g_exp = _split(g, 1, slices)
    dx = _rebuild(g_parts, g_exp, k_parts, k_exp, slices, _path, b_contract=1)
    return dx, _transposed_product(x, g, slices)


dense_product.defvjp(_dense_forward, _dense_backward)


@jax.custom_vjp
def add_bias(y, bias):
    """y + bias over y's last axis. Its gradient sums δ over every other axis (the batch, and
    an image's positions): autodiff would make that a `reduce`, whose order XLA's kernels
    choose; here it is a tree_sum."""
    return y + bias


def _add_bias_forward(y, bias):
    return y + bias, None


def _add_bias_backward(_, g):
    return g, tree_sum(g.reshape((-1, g.shape[-1])), 0)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


def tree_sum(x, axis: int = 0):
    """The sum over `axis` as a fixed tree of pairwise adds: zero-padded to a power of two, then
    halves added until one remains. The order is the program's, not a kernel's."""
    x = jnp.moveaxis(x, axis, 0)
    n = x.shape[0]
    if n == 0:
        return jnp.zeros(x.shape[1:], x.dtype)
    width = 1 << (n - 1).bit_length()
    if width != n:
        x = jnp.concatenate([x, jnp.zeros((width - n,) + x.shape[1:], x.dtype)])
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return x[0]


def mean(x, axis: int = 0):
    return tree_sum(x, axis) / x.shape[axis]


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer labels: log-sum-exp and the batch mean through tree_sum."""
    top = jnp.max(lax.stop_gradient(logits), axis=-1, keepdims=True)  # exact; shifts only
    shifted = logits - top
    log_total = jnp.log(tree_sum(jnp.exp(shifted), axis=-1))
    picked = tree_sum(shifted * jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
                      axis=-1)  # one non-zero term
    return mean(log_total - picked)


def avg_pool(x, window: int = 2):
    """`nn.avg_pool(x, (w, w), strides=(w, w))` (NHWC, VALID) with a fixed order of adds."""
    n, h, w, c = x.shape
    h, w = h - h % window, w - w % window
    x = x[:, :h, :w].reshape(n, h // window, window, w // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // window, w // window, window * window, c)
    return tree_sum(x, axis=3) / (window * window)


def patches(x, size: tuple[int, int]):
    """im2col for a stride-1 SAME convolution (NHWC): (N·H·W, kh·kw·C), columns in the order of
    a (kh, kw, C, F) kernel reshaped to (kh·kw·C, F). Shifted copies only: exact."""
    kh, kw = size
    n, h, w, c = x.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    shifted = [padded[:, dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)]
    return jnp.stack(shifted, axis=3).reshape(n * h * w, kh * kw * c)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_product(x, kernel, slices: int = 2):
    """A stride-1 SAME convolution (x NHWC, kernel (kh, kw, C, F)) without bias, as the im2col
    product `patches(x) @ kernel` with exact sums. The image is sliced before im2col, with one
    scale per image (forward) or per channel (the kernel's gradient), so the kh·kw shifted
    copies are made of int8 slices rather than float32 values."""
    return _conv_forward(x, kernel, slices)[0]


def _conv_forward(x, kernel, slices):
    n, h, w, c = x.shape
    kh, kw, _, features = kernel.shape
    x_parts, x_exp = _split(x.reshape((n, -1)), 1, slices)
    cols = [patches(p.reshape(x.shape), (kh, kw)) for p in x_parts]
    k_parts, k_exp = _split(kernel.reshape((-1, features)), None, slices)
    y = _rebuild(cols, jnp.repeat(x_exp, h * w), k_parts, k_exp, slices, _path)
    return y.reshape((n, h, w, features)), (x, kernel, k_parts, k_exp)


def _conv_backward(slices, saved, g):
    x, kernel, k_parts, k_exp = saved
    c, features = x.shape[-1], g.shape[-1]
    size = kernel.shape[:2]
    g_rows = g.reshape((-1, features))
    # δ·kernelᵀ gives the gradient of the patches; im2col's transpose adds their shifted
    # copies back (a fixed number of elementwise adds, in program order).
    g_parts, g_exp = _split(g_rows, 1, slices)
    d_cols = _rebuild(g_parts, g_exp, k_parts, k_exp, slices, _path, b_contract=1)
    _, to_image = jax.vjp(lambda image: patches(image, size), x)
    (dx,) = to_image(d_cols)
    # patchesᵀ·δ, the sum over every pixel of every image: the patches' rows (one per kernel
    # tap and channel) scaled per channel, built channel-first from the image's slices.
    x_parts, x_exp = _split(x.reshape((-1, c)), 0, slices)
    rows = [_patches_t(part.reshape(x.shape), size) for part in x_parts]
    gc_parts, gc_exp = _split(g_rows, 0, slices)
    dk = _rebuild(rows, jnp.tile(x_exp, size[0] * size[1]), gc_parts, gc_exp, slices, _path)
    return dx, dk.reshape(tuple(size) + (c, features))


def _patches_t(x, size: tuple[int, int]):
    """patches(x, size).T, (kh·kw·C, N·H·W), built from channel-first shifted copies so that
    it is laid out row by row for the dot."""
    kh, kw = size
    n, h, w, c = x.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    channels = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)),
                       ((0, 0), (0, 0), (top, kh - 1 - top), (left, kw - 1 - left)))
    shifted = [channels[:, :, dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)]
    return jnp.stack(shifted).reshape(kh * kw * c, n * h * w)


conv_product.defvjp(_conv_forward, _conv_backward)


def _shaped_like_output(x, kernel):
    """What a layer returns while `init` runs: zeros of its output's shape. The parameters
    are drawn before the product and do not depend on its values (flax derives each layer's
    key from its name), so they keep their bits. The product would only cost time there
    (outside jit it compiled about a hundred small programs, six of a job process's nine
    seconds). A model's init thus sees zeros after an exact layer: a layer whose parameters
    depended on its input's values would get other ones (none of flax's does)."""
    return jnp.zeros(x.shape[:-1] + kernel.shape[-1:], jnp.float32)


class Dense(nn.Module):
    """`nn.Dense` (parameters `kernel` (K, features) and `bias`, the same initialisers) whose
    product is `matmul`."""

    features: int
    slices: int = 2
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        if self.is_initializing():
            return _shaped_like_output(x, kernel)
        return dense(x, {"kernel": kernel, "bias": bias}, self.slices)


class Conv(nn.Module):
    """`nn.Conv(features, kernel_size)` with stride 1 and SAME padding (parameters `kernel`
    (kh, kw, C, features) and `bias`, the same initialisers), as an im2col `matmul`."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    slices: int = 2
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        if self.is_initializing():
            return _shaped_like_output(x, kernel)
        return conv(x, {"kernel": kernel, "bias": bias}, self.slices)


def dense(x, layer: dict, slices: int):
    """A `Dense` layer's forward pass from its parameters (the layer's, and evaluation jobs'),
    over x's last axis."""
    kernel = layer["kernel"]
    y = dense_product(x.reshape((-1, x.shape[-1])), kernel, slices)
    return add_bias(y.reshape(x.shape[:-1] + kernel.shape[-1:]), layer["bias"])


def conv(x, layer: dict, slices: int):
    """A `Conv` layer's forward pass from its parameters (the layer's, and evaluation jobs')."""
    return add_bias(conv_product(x, layer["kernel"], slices), layer["bias"])


def init_on_host(model: nn.Module, key, *args, **kwargs):
    """`model.init` on the host CPU when this process has one besides its accelerator: the
    initialisers' transcendental functions (erf_inv) may round otherwise on a GPU."""
    if jax.default_backend() == "cpu":
        return compiled_init(model, key, *args, **kwargs)
    try:
        host = jax.local_devices(backend="cpu")[0]  # this process's own, under jax.distributed
    except RuntimeError:
        return compiled_init(model, key, *args, **kwargs)
    with jax.default_device(host):
        # jit runs where its committed arguments live: inputs a job put on the accelerator
        # would take the initialisers there too.
        key, *args = jax.device_put((key, *args), host)
        return compiled_init(model, key, *args, **kwargs)


def compiled_init(model: nn.Module, key, *args, **kwargs):
    """`model.init` as one XLA program. Positional arguments are traced (arrays: the key and
    example inputs); keyword arguments, such as `train`, are held static. Outside jit each
    initialiser compiled on its own, one program per parameter shape; the parameters' bits
    are the same (tests/compute/test_exact.py)."""
    return jax.jit(partial(model.init, **kwargs))(key, *args)


def _integers(a_parts, b_parts, slices: int, path: str) -> list:
    dtype = _slice_dtype(path)
    a_parts = [p.astype(dtype) for p in a_parts]
    b_parts = [p.astype(dtype) for p in b_parts]
    return [_level(a_parts, b_parts, level, 0, a_parts[0].shape[1], path)
            for level in range(slices)]


def self_test(slices: int = 2) -> None:
    """On this machine: the int8 and the float32 path give the same integers, and those equal
    numpy's int64 products, for random inputs and for slices at ±127 throughout (the largest
    sums). EnvironmentMismatch otherwise: exact specs must not run here."""
    rng = np.random.default_rng(0)
    cases = [(rng.standard_normal((16, 300)).astype(np.float32),
              rng.standard_normal((300, 24)).astype(np.float32)),
             # Every top-slice product (−127)·(−127), the largest, in a sum longer than the
             # float32 path's chunk.
             (np.full((8, FLOAT32_TERMS + 7), -(1 - 2.0 ** -20), np.float32),
              np.full((FLOAT32_TERMS + 7, 8), -(1 - 2.0 ** -20), np.float32))]
    split = jax.jit(lambda a, b: (_split(a, 1, slices)[0], _split(b, 0, slices)[0]))
    for a, b in cases:
        a_parts, b_parts = split(a, b)
        by_path = {path: [np.asarray(p) for p in jax.jit(partial(
            _integers, slices=slices, path=path))(a_parts, b_parts)] for path in PATHS}
        a64, b64 = np.asarray(a_parts, np.int64), np.asarray(b_parts, np.int64)
        for level in range(slices):
            want = sum(a64[i] @ b64[level - i] for i in range(level + 1))
            for path, got in by_path.items():
                if not np.array_equal(got[level], want):
                    raise EnvironmentMismatch(f"exact arithmetic's {path} slice products are "
                                              "wrong on this machine; do not run exact specs")


ARITHMETICS = ("float", "exact")


class Arithmetic:
    """A job's choice of arithmetic, `float` (plain XLA float32, whose bits follow the machine)
    or `exact` (this module), behind one set of names: the layers, the loss and pooling."""

    def __init__(self, kind: str = "exact", slices: int = EXACT_SLICES):
        if kind not in ARITHMETICS:
            raise SpecError(f"arithmetic {kind!r} is not one of {', '.join(ARITHMETICS)}")
        self.kind, self.slices = kind, check_slices(slices)
        self.exact = kind == "exact"

    def __eq__(self, other):
        return isinstance(other, Arithmetic) and (self.kind, self.slices) == (other.kind,
                                                                              other.slices)

    def __hash__(self):
        return hash((self.kind, self.slices))

    def Dense(self, features: int) -> nn.Module:  # noqa: N802 - stands for the layer class
        return Dense(features, slices=self.slices) if self.exact else nn.Dense(features)

    def Conv(self, features: int, kernel_size=(3, 3)) -> nn.Module:  # noqa: N802
        if self.exact:
            return Conv(features, tuple(kernel_size), slices=self.slices)
        return nn.Conv(features, tuple(kernel_size))

    def dense(self, x, layer: dict):
        if self.exact:
            return dense(x, layer, self.slices)
        return x @ layer["kernel"] + layer["bias"]

    def conv(self, x, layer: dict):
        if self.exact:
            return conv(x, layer, self.slices)
        kernel = layer["kernel"]
        y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + layer["bias"]

    def avg_pool(self, x, window: int = 2):
        if self.exact:
            return avg_pool(x, window)
        return nn.avg_pool(x, (window, window), strides=(window, window))

    def cross_entropy(self, logits, labels):
        if self.exact:
            return softmax_cross_entropy(logits, labels)
        import optax

        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def init(self, model: nn.Module, key, *args, **kwargs):
        return init_on_host(model, key, *args, **kwargs) if self.exact else compiled_init(
            model, key, *args, **kwargs)

    def check_inputs(self, **arrays) -> None:
        if self.exact:
            for name, array in arrays.items():
                check_inputs(array, name)
