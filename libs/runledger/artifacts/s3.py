"""Blobs in S3 or any S3-compatible store, through boto3.

Key layout: <prefix>sha256/ab/cdef…; uploads in progress under <prefix>tmp/.

Upload strategy. The bytes arrive as a stream that can be read once, so the digest
(the key) is known only at the end:
- a blob up to one part (RUNLEDGER_ARTIFACT_PART_SIZE_MB, 8 MiB by default) is held in
  memory, hashed, HEADed and PUT only when absent (no temp object at all);
- a larger one streams as a multipart upload to a temp key, hashed part by part, one
  part in flight while the next is received (memory: about two parts). At the end a
  HEAD of the final key decides: already stored -> the multipart upload is aborted (no
  object ever materialises, nothing to delete); new -> completed, copied server-side
  to its digest's key (multipart copy above 5 GB) and the temp object deleted.
Spooling to local disk first would need disk as large as the largest file on every
API host and would upload only after the whole body arrived; uploading as it arrives
costs one server-side copy for new large blobs. A bucket lifecycle rule
(AbortIncompleteMultipartUpload, expiry of <prefix>tmp/) reclaims what a crashed API
process leaves behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from runledger.artifacts.base import (
    CHUNK_SIZE,
    DIGEST_PREFIX,
    BeforeCommit,
    BlobNotFound,
    BlobTooLarge,
    ChunkSource,
    StoredBlob,
    blob_path,
    check_range,
    rechunk,
)

MIB = 1 << 20
MAX_PARTS = 10_000  # S3's limit: with 8 MiB parts a blob may reach 78 GiB (raise the part size for more)
_MISSING = {"404", "NoSuchKey", "NotFound"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of s3://bucket[/prefix]."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment (AWS_ENDPOINT_URL_S3 /
    AWS_ENDPOINT_URL, AWS_REGION, credentials chain, AWS_CONFIG_FILE's s3 settings)."""
    config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
    return boto3.session.Session().client("s3", config=config)


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING


class S3ArtifactStore:
    """Content-addressed blobs in `bucket` under `prefix`."""

    def __init__(
        self, bucket: str, prefix: str = "", *, client: Any = None, part_size: int = 8 * MIB
    ) -> None:
        if part_size < 5 * MIB:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self._client = client if client is not None else s3_client()

    @classmethod
    def from_uri(cls, uri: str, *, client: Any = None, part_size: int = 8 * MIB) -> S3ArtifactStore:
        bucket, prefix = parse_s3_uri(uri)
        return cls(bucket, prefix, client=client, part_size=part_size)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key_of(self, digest: str) -> str:
        """The object key of the blob of `digest`."""
        return self.prefix + blob_path(digest)

    # ------------------------------------------------------------------ writes

    async def put_stream(
        self, chunks: ChunkSource, *, max_size: int | None = None, before_commit: BeforeCommit | None = None
    ) -> StoredBlob:
        parts = rechunk(chunks, self.part_size, max_size=max_size)
        # A list, popped as parts are sent: no local keeps a sent part alive.
        head = [await anext(parts, b"")]
        following = await anext(parts, None)
        if following is None:
            return await self._put_small(head.pop(), before_commit)
        head.append(following)
        del following
        return await self._put_multipart(head, parts, before_commit)

    async def _put_small(self, data: bytes, before_commit: BeforeCommit | None) -> StoredBlob:
        digest = DIGEST_PREFIX + await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        if before_commit is not None:
            await before_commit(digest)
        await asyncio.to_thread(self._put_once, self.key_of(digest), data)
        return StoredBlob(digest, len(data))

    def _put_once(self, key: str, data: bytes) -> None:
        if not self._head(key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentLength=len(data))

    async def _put_multipart(
        self, head: list[bytes], rest: AsyncIterator[bytes], before_commit: BeforeCommit | None
    ) -> StoredBlob:
        tmp_key = f"{self.prefix}tmp/{uuid.uuid4().hex}"
        created = await asyncio.to_thread(
            self._client.create_multipart_upload, Bucket=self.bucket, Key=tmp_key
        )
        upload_id: str = created["UploadId"]
        hasher = hashlib.sha256()
        done: list[dict[str, Any]] = []
        size = 0
        in_flight: asyncio.Task[dict[str, Any]] | None = None
        try:

            async def send(data: bytes) -> None:
                nonlocal in_flight, size
                if len(done) + (in_flight is not None) >= MAX_PARTS:
                    raise BlobTooLarge(MAX_PARTS * self.part_size)
                await asyncio.to_thread(hasher.update, data)  # in order: awaited before the next part
                size += len(data)
                if in_flight is not None:
                    done.append(await in_flight)
                number = len(done) + 1
                # One part uploads while the next one is received.
                in_flight = asyncio.create_task(
                    asyncio.to_thread(self._upload_part, tmp_key, upload_id, number, data)
                )

            while head:
                await send(head.pop(0))
            async for part in rest:
                await send(part)
                del part
            if in_flight is not None:
                done.append(await in_flight)
                in_flight = None
            digest = DIGEST_PREFIX + hasher.hexdigest()
            if before_commit is not None:
                await before_commit(digest)
            await asyncio.to_thread(self._commit_multipart, tmp_key, upload_id, done, self.key_of(digest))
        except BaseException:
            if in_flight is not None:
                in_flight.cancel()
                await asyncio.gather(in_flight, return_exceptions=True)
            await asyncio.to_thread(self._abort, tmp_key, upload_id)
            raise
        return StoredBlob(digest, size)

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        answer = self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _commit_multipart(
        self, tmp_key: str, upload_id: str, parts: list[dict[str, Any]], final: str
    ) -> None:
        if self._head(final):  # stored already: drop the upload, nothing was materialised
            self._abort(tmp_key, upload_id)
            return
        self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=tmp_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        try:
            # Managed copy: CopyObject up to 5 GB, UploadPartCopy beyond; all server-side.
            self._client.copy(
                {"Bucket": self.bucket, "Key": tmp_key},
                self.bucket,
                final,
                Config=TransferConfig(multipart_threshold=4 * 1024 * MIB, multipart_chunksize=512 * MIB),
            )
        finally:
            self._client.delete_object(Bucket=self.bucket, Key=tmp_key)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if not _missing(exc) and exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    # ------------------------------------------------------------------ reads

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return answer

    async def open(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        check_range(offset, length)
        if length == 0:
            if not await self.exists(digest):
                raise BlobNotFound(digest)
            return _empty()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key_of(digest)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            answer = await asyncio.to_thread(self._client.get_object, **kwargs)
        except ClientError as exc:
            if _missing(exc):
                raise BlobNotFound(digest) from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return _empty()  # offset at or past the end
            raise
        return _stream(answer["Body"])

    async def size(self, digest: str) -> int | None:
        head = await asyncio.to_thread(self._head, self.key_of(digest))
        return None if head is None else int(head["ContentLength"])

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self._head, self.key_of(digest)) is not None

    async def delete(self, digest: str) -> bool:
        key = self.key_of(digest)
        if await asyncio.to_thread(self._head, key) is None:
            return False
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=key)
        return True


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


async def _stream(body: Any) -> AsyncIterator[bytes]:
    """A botocore StreamingBody read chunk by chunk off the event loop."""
    try:
        while True:
            chunk: bytes = await asyncio.to_thread(body.read, CHUNK_SIZE)
            if not chunk:
                return
            yield chunk
    finally:
        body.close()
