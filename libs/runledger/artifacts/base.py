"""The artifact store interface: content-addressed blobs, streamed in and out.

A blob is stored once under the sha256 of its bytes, whatever run logs it; the
metadata (run, path, size, digest, media type) lives in Postgres through
run.artifact_logged events. Uploads hash while they stream into a temporary
object and commit it under its digest, so no caller ever holds a whole file in
memory and a reader never sees a partial blob.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import NamedTuple, Protocol, runtime_checkable

DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})\Z")
# Reads and local writes move this much per thread hop: large enough that the hop
# costs nothing, small enough that memory stays flat.
CHUNK_SIZE = 1 << 20

ChunkSource = AsyncIterator[bytes] | Iterator[bytes]
# Awaited with the digest once the bytes are hashed, before the store looks for the blob and
# commits it: the caller's point to exclude a concurrent delete of the same blob.
BeforeCommit = Callable[[str], Awaitable[None]]


class ArtifactStoreError(Exception):
    """Base of the store's errors."""


class BlobNotFound(ArtifactStoreError):
    """No blob with this digest is stored."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is not in the artifact store")
        self.digest = digest


class SizeLimitExceeded(ArtifactStoreError):
    """The stream went past the `max_size` the caller allowed; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload exceeds {limit} bytes")
        self.limit = limit


class BlobTooLarge(ArtifactStoreError):
    """The blob exceeds what the backend can hold as one object (S3: 10,000 parts)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a blob of this store may hold at most {limit} bytes")
        self.limit = limit


class StoredBlob(NamedTuple):
    """What put_stream stored: the digest ("sha256:<hex>") and the size in bytes."""

    digest: str
    size: int


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifact bytes live. Implementations: LocalArtifactStore, S3ArtifactStore."""

    async def put_stream(
        self, chunks: ChunkSource, *, max_size: int | None = None, before_commit: BeforeCommit | None = None
    ) -> StoredBlob:
        """Store the streamed bytes under their sha256 (once, however often they are put).

        Raises SizeLimitExceeded (storing nothing) past `max_size` bytes. `before_commit(digest)`
        is awaited after the last byte is hashed and before the store checks whether the blob is
        stored already; when it raises, nothing is stored.
        """
        ...

    async def open(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes [offset, offset+length) as chunks; BlobNotFound (raised here, before
        any chunk) when it is not stored."""
        ...

    async def size(self, digest: str) -> int | None:
        """The blob's size in bytes, None when it is not stored."""
        ...

    async def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""
        ...

    async def delete(self, digest: str) -> bool:
        """Remove the blob (for the retention sweeper); False when it was not stored."""
        ...

    def describe(self) -> str:
        """Where the blobs are, for logs and messages (no credentials)."""
        ...


def hex_of(digest: str) -> str:
    """The hex part of a "sha256:<hex>" digest; ValueError for anything else."""
    match = _DIGEST.match(digest)
    if match is None:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return match.group(1)


def blob_path(digest: str) -> str:
    """The blob's relative location: sha256/ab/cdef… (two-character fan-out keeps directories small)."""
    hex_digest = hex_of(digest)
    return f"sha256/{hex_digest[:2]}/{hex_digest[2:]}"


async def iterate(chunks: ChunkSource) -> AsyncIterator[bytes]:
    """Any chunk source as an async iterator; a blocking iterator is advanced in a worker thread."""
    if isinstance(chunks, AsyncIterator):
        async for chunk in chunks:
            if chunk:
                yield chunk
        return
    while True:
        piece = await asyncio.to_thread(_next, chunks)
        if piece is None:
            return
        if piece:
            yield piece


def _next(chunks: Iterator[bytes]) -> bytes | None:
    chunk = next(chunks, None)
    return None if chunk is None else bytes(chunk)


async def rechunk(chunks: ChunkSource, size: int, *, max_size: int | None = None) -> AsyncIterator[bytes]:
    """Chunks of exactly `size` bytes (the last one shorter); SizeLimitExceeded past `max_size`.

    Network bodies arrive in small pieces (64 KiB from uvicorn): gathering them costs one
    copy (the join) and saves a thread hop or an S3 request per piece. Pieces are released
    as soon as they are joined, so at most about two parts are alive here at once.
    """
    pending: list[bytes | memoryview] = []
    pending_size = 0
    total = 0
    async for chunk in iterate(chunks):
        total += len(chunk)
        if max_size is not None and total > max_size:
            raise SizeLimitExceeded(max_size)
        view = memoryview(chunk)  # slices without copying, even of a huge chunk
        while len(view):
            room = size - pending_size
            if len(view) < room:
                pending.append(view)
                pending_size += len(view)
                break
            pending.append(view[:room])
            view = view[room:]
            part = b"".join(pending)
            pending.clear()
            pending_size = 0
            yield part
            del part  # not kept alive while the next part gathers
    if pending:
        yield b"".join(pending)


def check_range(offset: int, length: int | None) -> None:
    """ValueError for a negative offset or length."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range: offset={offset} length={length}")
