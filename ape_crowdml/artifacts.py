"""Content-addressed artifact store: a file per keccak256 digest, under any fsspec URL.

A local folder by default; s3:// (s3fs; an S3-compatible server through AWS_ENDPOINT_URL),
gs://… when the spec names one; http(s):// for reading only. Readers verify the digest, so the
store needs no trust: a wrong or truncated file is refused, never handed over. The same store
carries published specs (under the on-chain spec digest): the requester puts the spec's URL in
the task's Published event, and a worker that shares the store can also find it by digest.
"""

from __future__ import annotations

from pathlib import Path

from crowdml_compute.digest import keccak_digest
from .errors import ArtifactMissing


def _name(digest: bytes) -> str:
    return "0x" + digest.hex()


class ArtifactStore:
    """`options` are fsspec's for the URL (credentials, endpoint); `public_url`, where others
    read the same objects when that is not `url` (a bucket written over S3, read over HTTPS)."""

    def __init__(self, url: str, options: dict | None = None, public_url: str | None = None):
        import fsspec

        self.url = str(url)
        self.public_url = public_url
        self._fs, self._root = fsspec.core.url_to_fs(self.url, **(options or {}))

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def _path(self, digest: bytes) -> str:
        return f"{self._root.rstrip('/')}/{_name(digest)}"

    def uri(self, digest: bytes) -> str:
        """Where `put` stores `digest`, as a URL another process can open (a local folder as an
        absolute path)."""
        if self.public_url:
            return f"{self.public_url.rstrip('/')}/{_name(digest)}"
        if "://" in self.url:
            return f"{self.url.rstrip('/')}/{_name(digest)}"
        return str(Path(self.url).expanduser().resolve() / _name(digest))

    @classmethod
    def own(cls, policy, fallback: ArtifactStore) -> ArtifactStore:
        """A party's own public store, as `crowdml: worker:` names it (`result_store`, its
        `result_store_options` and the `result_url` others read it at), else `fallback`."""
        if policy.result_store is None:
            return fallback
        return cls(policy.result_store, policy.result_store_options, policy.result_url)

    def folder_uri(self) -> str:
        """The folder `uri` names files in, as others read it."""
        return self.uri(b"\0" * 32).rsplit("/", 1)[0]

    def put(self, data: bytes) -> bytes:
        """Store `data` under its keccak256; returns the digest."""
        digest = keccak_digest(data)
        self._fs.makedirs(self._root, exist_ok=True)
        self._fs.pipe_file(self._path(digest), data)
        return digest

    def get(self, digest: bytes) -> bytes:
        """The bytes stored under `digest`, verified."""
        try:
            data = self._fs.cat_file(self._path(digest))
        except (FileNotFoundError, OSError):
            raise ArtifactMissing(f"{self.url} has no artifact {_name(digest)}") from None
        if keccak_digest(data) != digest:
            raise ArtifactMissing(f"{self.url}/{_name(digest)} does not match its digest; "
                                  "the store is corrupt or tampered with")
        return data
