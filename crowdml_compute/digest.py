"""Canonical bytes of a job result, and keccak256 digests.

A result digest is keccak256 over one of two encodings. Integers are unsigned little-endian, but
for the bitstring's count.

Parameter pytree (`encode_pytree`)::

    b"crowdml/pytree/v1\\n"                    magic
    u32 leaf count
    per leaf, in ascending order of path (UTF-8 bytes):
        u32 length, path        leaf path, keys joined by "/", e.g. "params/Dense_0/kernel"
        u32 length, dtype       numpy's explicit little-endian type string, e.g. "<f4", "|u1"
        u32 ndim, ndim × u64    shape
        u64 length, data        raw C-order bytes in that dtype

Bitstring (`encode_bits`), shaped for a contract (contracts/ModelPurchase.vy recomputes the
digest with one concat and counts the ones a 32-byte word at a time)::

    b"crowdml/bits/v2\\n"                      magic (16 bytes)
    u256 bit count n, big-endian (32 bytes)    as Solidity/Vyper write a uint256
    32 * ceil(n/256) bytes      bit i is bit (7 - i % 8) of byte i // 8 (MSB first, as
                                numpy.packbits writes it), zero-padded to whole 32-byte words

Not flax.serialization.to_bytes: msgpack's layout is an implementation detail of flax, and it does
not say how dtype or byte order are written. This format is small enough to reimplement anywhere.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from eth_hash.auto import keccak

PYTREE_MAGIC = b"crowdml/pytree/v1\n"
BITS_MAGIC = b"crowdml/bits/v2\n"
WORD = 32  # a bitstring body is whole EVM words
_CHUNK = 1 << 20


def keccak_digest(data: bytes) -> bytes:
    """keccak256 (Ethereum's, not SHA3-256) of `data`: 32 bytes."""
    return keccak(data)


def file_digest(path: str | Path) -> bytes:
    """keccak256 of a file's bytes, read in chunks."""
    hasher = keccak.new(b"")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.digest()


def _path_string(path) -> str:
    import jax

    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            part = str(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            part = str(entry.idx)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            part = entry.name
        else:
            raise TypeError(f"unsupported pytree node {entry!r}")
        if "/" in part or not part:
            raise ValueError(f"pytree key {part!r} must be non-empty and contain no '/'")
        parts.append(part)
    return "/".join(parts)


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise TypeError(f"dtype {array.dtype} has no canonical encoding (bool/int/uint/float only)")
    # Not np.ascontiguousarray: it turns 0-d scalars into shape (1,).
    return array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)


def _lengthed(data: bytes, width: str = "<I") -> bytes:
    return struct.pack(width, len(data)) + data


class _NotPlain(Exception):
    """A node that only jax's tree utilities know (a flax struct, a namedtuple, …)."""


def _plain_leaves(tree, prefix: str = "") -> dict:
    """The leaves of a tree of dicts, lists and tuples by path, as jax flattens them (None holds
    no leaf), without importing jax: the plugin, which has no jax, encodes such trees too."""
    if tree is None:
        return {}
    if type(tree) in (dict, list, tuple):
        items = tree.items() if type(tree) is dict else enumerate(tree)
        leaves = {}
        for key, value in items:
            part = str(key)
            if "/" in part or not part:
                raise ValueError(f"pytree key {part!r} must be non-empty and contain no '/'")
            leaves.update(_plain_leaves(value, f"{prefix}{part}/"))
        return leaves
    if isinstance(tree, (np.ndarray, np.generic, bool, int, float)):
        return {prefix[:-1]: tree}
    raise _NotPlain


def encode_pytree(tree) -> bytes:
    """Canonical bytes of a pytree of arrays (see the module docstring)."""
    try:
        leaves = {name: _little_endian(np.asarray(leaf))
                  for name, leaf in _plain_leaves(tree).items()}
    except _NotPlain:
        import jax

        from .parallel import host_value  # a replicated array of several processes: its copy

        leaves = {
            _path_string(path): _little_endian(np.asarray(host_value(leaf)))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        }
    out = [PYTREE_MAGIC, struct.pack("<I", len(leaves))]
    for name in sorted(leaves, key=lambda p: p.encode()):
        array = leaves[name]
        out += [
            _lengthed(name.encode()),
            _lengthed(array.dtype.str.encode()),
            struct.pack(f"<I{array.ndim}Q", array.ndim, *array.shape),
            _lengthed(array.tobytes(order="C"), "<Q"),
        ]
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated crowdml encoding")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def lengthed(self, width: str = "<I") -> bytes:
        return self.take(self.unpack(width)[0])


def decode_pytree(data: bytes) -> dict:
    """Inverse of encode_pytree: nested dicts (keyed by the path parts) of numpy arrays.

    Flax params come back as the `{"params": {...}}` dict that `model.apply` takes.
    """
    if not data.startswith(PYTREE_MAGIC):
        raise ValueError("not a crowdml pytree encoding (bad magic)")
    reader = _Reader(data)
    reader.take(len(PYTREE_MAGIC))
    tree: dict = {}
    for _ in range(reader.unpack("<I")[0]):
        path = reader.lengthed().decode()
        dtype = np.dtype(reader.lengthed().decode())
        (ndim,) = reader.unpack("<I")
        shape = reader.unpack(f"<{ndim}Q")
        array = np.frombuffer(reader.lengthed("<Q"), dtype=dtype).reshape(shape)
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    if reader.pos != len(reader.data):
        raise ValueError("trailing bytes after crowdml pytree encoding")
    return tree


def encode_bits(bits) -> bytes:
    """Canonical bytes of a 1-D bitstring (any array of 0/1 or bools)."""
    bits = np.asarray(bits)
    if bits.ndim != 1 or not np.isin(bits, (0, 1)).all():
        raise ValueError("a bitstring is a 1-D array of 0/1 values")
    return BITS_MAGIC + bits.size.to_bytes(WORD, "big") + bits_body(bits)


def bits_body(bits) -> bytes:
    """The bits MSB first, zero-padded to whole 32-byte words: what ModelPurchase.finalize takes."""
    packed = np.packbits(np.asarray(bits).astype(np.uint8)).tobytes()
    return packed.ljust(-(-len(packed) // WORD) * WORD, b"\x00")


def decode_bits(data: bytes) -> np.ndarray:
    """Inverse of encode_bits: a uint8 array of 0/1."""
    if not data.startswith(BITS_MAGIC):
        raise ValueError("not a crowdml bitstring encoding (bad magic)")
    reader = _Reader(data)
    reader.take(len(BITS_MAGIC))
    n = int.from_bytes(reader.take(WORD), "big")
    body = reader.take(-(-n // (8 * WORD)) * WORD)
    if reader.pos != len(reader.data):
        raise ValueError("trailing bytes after crowdml bitstring encoding")
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
    if bits[n:].any():
        raise ValueError("non-zero padding in crowdml bitstring encoding")
    return bits[:n]


def decode_result(data: bytes):
    """Decode either encoding, by its magic."""
    return decode_bits(data) if data.startswith(BITS_MAGIC) else decode_pytree(data)
