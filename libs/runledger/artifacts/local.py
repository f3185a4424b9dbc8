"""Blobs in a local directory: <root>/sha256/ab/cdef…, written through a temp file and an atomic rename."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from runledger.artifacts.base import (
    CHUNK_SIZE,
    DIGEST_PREFIX,
    BeforeCommit,
    BlobNotFound,
    ChunkSource,
    StoredBlob,
    blob_path,
    check_range,
    rechunk,
)


class LocalArtifactStore:
    """Content-addressed blobs under `root` (default: <state dir>/artifacts).

    An upload streams into <root>/tmp/ (same filesystem, so the final rename is atomic),
    hashing as it goes, is fsynced, then renamed to its digest's path unless that blob
    already exists (then the temp file is dropped: stored once). A crash leaves at most
    a temp file, never a partial blob under a digest.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"

    def describe(self) -> str:
        return f"local directory {self.root}"

    def path_of(self, digest: str) -> Path:
        """Where the blob of `digest` lives (whether or not it is stored)."""
        return self.root / blob_path(digest)

    async def put_stream(
        self, chunks: ChunkSource, *, max_size: int | None = None, before_commit: BeforeCommit | None = None
    ) -> StoredBlob:
        await asyncio.to_thread(self._tmp.mkdir, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        tmp = Path(tmp_name)
        file = os.fdopen(fd, "wb")
        hasher = hashlib.sha256()
        size = 0
        try:
            async for chunk in rechunk(chunks, CHUNK_SIZE, max_size=max_size):
                # hashlib and file writes release the GIL: the event loop keeps serving.
                await asyncio.to_thread(_write, file, hasher, chunk)
                size += len(chunk)
            digest = DIGEST_PREFIX + hasher.hexdigest()
            if before_commit is not None:
                await before_commit(digest)
            await asyncio.to_thread(self._commit, file, tmp, self.path_of(digest))
        except BaseException:
            _discard(file, tmp)  # synchronous: must also run when the task is being cancelled
            raise
        return StoredBlob(digest, size)

    def _commit(self, file: IO[bytes], tmp: Path, final: Path) -> None:
        if final.exists():  # the same bytes are stored already
            file.close()
            tmp.unlink()
            return
        file.flush()
        os.fsync(file.fileno())
        file.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        # Read-only: a blob never changes once committed.
        tmp.chmod(0o444)
        # Atomic; a concurrent upload of the same bytes renames identical content over it.
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    async def open(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        check_range(offset, length)
        try:
            file = await asyncio.to_thread(self.path_of(digest).open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        return _read(file, offset, length)

    async def size(self, digest: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path_of(digest).stat)).st_size
        except FileNotFoundError:
            return None

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self.path_of(digest).is_file)

    async def delete(self, digest: str) -> bool:
        path = self.path_of(digest)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True


def _write(file: IO[bytes], hasher: hashlib._Hash, chunk: bytes) -> None:
    hasher.update(chunk)
    file.write(chunk)


def _discard(file: IO[bytes], tmp: Path) -> None:
    file.close()
    tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (the directory entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _read(file: IO[bytes], offset: int, length: int | None) -> AsyncIterator[bytes]:
    try:
        if offset:
            await asyncio.to_thread(file.seek, offset)
        remaining = length
        while remaining is None or remaining > 0:
            want = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
            chunk = await asyncio.to_thread(file.read, want)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        with contextlib.suppress(OSError):
            file.close()
