"""An agreed result's way from a worker's machine to the requester's, between strangers.

Once a task settles AGREED, a worker uploads the result to a store of its own (its config's
`worker.result_store`, written with its own credentials; `worker.result_url` is where others
read the same objects) and announces the URI on the board (`announce`, which only a worker of
the agreed roster can call). When the spec names a result key, the upload is sealed to it
(libsodium's sealed box: X25519 + XSalsa20-Poly1305), so only the requester, who made the key
with `make-spec` and keeps its secret half in its state folder, can open what the public URI
serves. The requester's `fetch` reads the announced URIs within its read limits, opens the box
and checks the digest against the board's `result_of`: no store, URI or worker is trusted.

The seal is deterministic: its ephemeral key is derived from the result and the requester's
key, so every honest worker of the task uploads the same bytes, and a worker that finds them
at an announced URI knows the requester can fetch the result there without another upload.
This tells an observer only whether two sealed results are equal, which the board's public
result digest already says; nobody without the result can derive the ephemeral key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from nacl.bindings import crypto_box_SEALBYTES
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b
from nacl.public import Box, PrivateKey, PublicKey, SealedBox

from .errors import ArtifactMissing

# BLAKE2b personalisation (16 bytes): keeps this derivation apart from any other use.
_SEAL_PERSON = b"crowdml-seal-v1\0"


def new_result_key() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair: (public, secret), 32 bytes each."""
    secret = PrivateKey.generate()
    return bytes(secret.public_key), bytes(secret)


def seal(artifact: bytes, public_key: bytes) -> bytes:
    """`artifact` sealed to `public_key`: a standard libsodium sealed box (ephemeral public
    key, then the box), whose ephemeral key is derived from the artifact and the recipient, so
    that equal inputs give equal bytes. `SealedBox(secret).decrypt` opens it."""
    recipient = PublicKey(public_key)
    ephemeral = PrivateKey(blake2b(public_key + artifact, digest_size=32, person=_SEAL_PERSON,
                                   encoder=RawEncoder))
    ephemeral_public = bytes(ephemeral.public_key)
    # libsodium's crypto_box_seal nonce: BLAKE2b-192 of the two public keys.
    nonce = blake2b(ephemeral_public + public_key, digest_size=24, encoder=RawEncoder)
    return ephemeral_public + Box(ephemeral, recipient).encrypt(artifact, nonce).ciphertext


def unseal(sealed: bytes, secret_key: bytes, where: str) -> bytes:
    """The artifact inside `sealed`; ArtifactMissing (naming `where`) if the box was not sealed
    to this key or was altered."""
    if len(sealed) < crypto_box_SEALBYTES:
        raise ArtifactMissing(f"{where} holds {len(sealed)} bytes, too few for a sealed result")
    try:
        return SealedBox(PrivateKey(secret_key)).decrypt(sealed)
    except CryptoError:
        raise ArtifactMissing(f"{where} does not open with this requester's result key "
                              "(sealed to another key, or altered)") from None


# A delivery holds the artifact and what the worker's job said of its run (its transcript,
# each epoch's loss, the final metrics): MAGIC, the artifact's length (8 bytes, big-endian),
# the artifact, then the summary as JSON (sorted keys; empty when there is none).
MAGIC = b"crowdml/delivery/v1\n"


@dataclass(frozen=True)
class Delivery:
    artifact: bytes  # the result's canonical bytes: keccak256 is the board's result_of
    summary: dict | None  # JobResult.summary(): the worker's word, not the chain's
    uri: str = ""  # where it was read


def pack(artifact: bytes, summary: dict | None) -> bytes:
    tail = b"" if summary is None else json.dumps(summary, sort_keys=True).encode()
    return MAGIC + len(artifact).to_bytes(8, "big") + artifact + tail


def unpack(data: bytes, where: str) -> Delivery:
    head = len(MAGIC) + 8
    size = int.from_bytes(data[len(MAGIC):head], "big")
    if not data.startswith(MAGIC) or len(data) < head + size:
        raise ArtifactMissing(f"{where} does not hold a crowdml delivery")
    tail = data[head + size:]
    try:
        summary = json.loads(tail) if tail else None
    except ValueError:
        raise ArtifactMissing(f"{where}: the run summary is not JSON") from None
    return Delivery(data[head:head + size], summary if isinstance(summary, dict) else None,
                    where)


def as_upload(artifact: bytes, summary: dict | None, result_key: str | None) -> bytes:
    """What a worker uploads for a spec: the artifact and its run's summary, sealed to the
    spec's result key, or in the clear when the spec names none (a model purchase's
    evaluation, whose bitstring the seller reads)."""
    bundle = pack(artifact, summary)
    if result_key is None:
        return bundle
    return seal(bundle, bytes.fromhex(result_key.removeprefix("0x")))


def _open(uri: str, secret_key: bytes | None, local_ok: bool) -> Delivery:
    """The delivery an announced URI serves, read within this party's read limits and opened
    with `secret_key` when there is one; ArtifactMissing or DataDigestMismatch, saying why."""
    from crowdml_compute.data import is_remote, read_limited

    if not (local_ok or is_remote(uri)):
        raise ArtifactMissing(f"{uri}: a path on the announcer's machine, not read "
                              "(allow_local_uris is off)")
    data, _ = read_limited(uri)
    return unpack(data if secret_key is None else unseal(data, secret_key, uri), uri)


def read_announced(announcements: list[tuple[str, str]], result: bytes, *,
                   secret_key: bytes | None, local_ok: bool) -> Delivery:
    """The agreed result, from the first announced URI that serves it (`_open`), its artifact
    checked against `result` (the board's `result_of`). ArtifactMissing otherwise, saying
    every URI looked at and what was found there."""
    from crowdml_compute.digest import keccak_digest
    from .errors import DataDigestMismatch

    found: list[str] = []
    for uri in dict.fromkeys(uri for _, uri in announcements):
        try:
            delivery = _open(uri, secret_key, local_ok)
        except (DataDigestMismatch, ArtifactMissing) as exc:
            found.append(str(exc))
            continue
        if keccak_digest(delivery.artifact) == result:
            return delivery
        found.append(f"{uri}: not the agreed result 0x{result.hex()}")
    if not found:
        raise ArtifactMissing("no worker has announced the result yet (each announces where "
                              "it uploaded it once it sees the task agreed, before claiming)")
    raise ArtifactMissing(f"none of the {len(found)} announced URIs serves the agreed result: "
                          + "; ".join(found))


def fetch_agreed(announcements: list[tuple[str, str]], result: bytes, *,
                 secret_key: bytes | None, local_ok: bool, shared) -> Delivery:
    """`read_announced`, or else, for a result in the clear, the copy in `shared` (an
    ArtifactStore this party shares with the workers, by digest); the first one's
    ArtifactMissing when neither has it."""
    try:
        return read_announced(announcements, result, secret_key=secret_key, local_ok=local_ok)
    except ArtifactMissing:
        if secret_key is not None:
            raise
        try:
            return Delivery(shared.get(result), None, shared.url)
        except ArtifactMissing:
            pass
        raise


# How long a worker spends, in all, checking whether co-workers' announced URIs already serve
# the bytes it would upload: announcements are a co-worker's words, and however many it makes,
# or however slowly they answer, they must not hold the agent's loop for long. Past it the
# worker uploads its own copy (a duplicate costs storage and one announcement's gas).
VERIFY_SECONDS = 10.0


def already_delivered(announcements: list[tuple[str, str]], upload: bytes, *,
                      local_ok: bool) -> str | None:
    """An announced URI that serves exactly `upload` (the same sealed bytes this worker would
    upload: the seal is deterministic), if any; each read stops at `upload`'s size, and all of
    them together within VERIFY_SECONDS."""
    from crowdml_compute.data import is_remote, read_limited
    from .errors import DataDigestMismatch

    ends = time.monotonic() + VERIFY_SECONDS
    for uri in dict.fromkeys(uri for _, uri in announcements):
        left = ends - time.monotonic()
        if left <= 0:
            return None
        if not (local_ok or is_remote(uri)):
            continue
        try:
            data, _ = read_limited(uri, len(upload), left)
        except DataDigestMismatch:
            continue
        if data == upload:
            return uri
    return None


def read_summaries(announcements: list[tuple[str, str]], *, secret_key: bytes | None,
                   local_ok: bool) -> tuple[dict[str, Delivery], list[str]]:
    """Each announcing worker's delivery (its run's summary; for an agreed task, the result
    too, unchecked here), and a line for each URI that gave nothing usable."""
    from .errors import DataDigestMismatch

    found, failed = {}, []
    for worker, uri in announcements:
        if worker in found:
            continue
        try:
            found[worker] = _open(uri, secret_key, local_ok)
        except (DataDigestMismatch, ArtifactMissing) as exc:
            failed.append(str(exc))
    return found, failed


def first_divergence(transcripts: list[list[str]]) -> int | None:
    """The first epoch (1-based) at which the transcripts differ, None if they never do."""
    for epoch, digests in enumerate(zip(*transcripts), 1):
        if len(set(digests)) > 1:
            return epoch
    lengths = {len(t) for t in transcripts}
    return min(lengths) + 1 if len(lengths) > 1 else None
