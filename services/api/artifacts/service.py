"""Artifact logic: uploads (blob, then quota charge, then event), downloads and listings.

Storage quota (tenant_quotas.max_artifact_bytes, NULL = unlimited) counts the distinct
blobs a tenant stores, each once (tenant_usage.artifact_bytes): logging the same bytes
from 1,000 runs costs the tenant their size once, as it costs the store. A new upload
is refused (429) before its body is read when its Content-Length does not fit in
what is left; a body without Content-Length is cut off (429, nothing kept) the moment
it passes that; the final charge, made once the digest is known, is exact under
concurrent uploads. Bytes already charged are not refunded when a path is overwritten
or a run deleted: the blob stays stored until a retention sweeper removes blobs no run
references (artifact_blobs lists them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from runledger.artifacts import ArtifactStore, BlobNotFound, BlobTooLarge, SizeLimitExceeded
from runledger.events.models import EventType
from services.api.access import Access, Located, readable_run
from services.api.artifacts.paths import ByteRange, artifact_path, directory_path, media_type_for
from services.api.artifacts.repository import ArtifactRepository, ArtifactRow, QuotaReached, StorageQuota
from services.api.errors import InvalidParameter, NotFound, RequestLimitExceeded
from services.api.principal import Principal
from services.api.runs.repository import RunRepository
from services.api.runs.schemas import RunInfo
from services.api.writes import EventWriter, WriteReceipt, build_event

QUOTA_RETRY_AFTER_S = 60


@dataclass(frozen=True, slots=True)
class Uploaded:
    """A stored and logged file, and whether reads see it yet."""

    artifact: ArtifactRow
    receipt: WriteReceipt


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a directory listing: a file, or a directory (size None)."""

    path: str  # relative to the run's artifact root
    is_dir: bool
    size: int | None = None
    digest: str | None = None
    media_type: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Download:
    """A file being sent: its row, the byte range (None = all) and the chunks."""

    artifact: ArtifactRow
    range: ByteRange | None
    chunks: AsyncIterator[bytes]


def _quota_error(quota: StorageQuota, size: int | None) -> RequestLimitExceeded:
    adds = "" if size is None else f" and this upload adds {size}"
    return RequestLimitExceeded(
        f"artifact storage quota of {quota.limit} bytes reached: the tenant stores {quota.used} bytes{adds}"
        " (the same bytes logged again count once; ask an admin to raise max_artifact_bytes)",
        headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
    )


class ArtifactService:
    """What the artifact routes (native and MLflow's proxy) do, for one caller."""

    def __init__(
        self, pool: asyncpg.Pool[Any], store: ArtifactStore, writer: EventWriter, principal: Principal
    ) -> None:
        self._runs = RunRepository(pool, principal)
        self._artifacts = ArtifactRepository(pool)
        self._store = store
        self._writer = writer
        self._principal = principal
        self._access = Access(principal)

    async def run(self, run_id: str, experiment_id: str | None = None) -> tuple[Located, RunInfo]:
        """The run if the caller may read it (and, when given, it is of `experiment_id`); else 404."""
        located, info = await readable_run(self._access, self._runs, run_id)
        if experiment_id is not None and info.experiment_id != experiment_id:
            raise NotFound(f"run {run_id!r} does not exist in experiment {experiment_id!r}")
        return located, info

    async def writable_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo:
        """The run if the caller may write it: 404 unreadable, 403 read-only, 400 deleted."""
        located, info = await self.run(run_id, experiment_id)
        self._access.require_write(located, f"run {run_id}")
        if info.lifecycle_stage != "active":
            raise InvalidParameter(f"run {run_id} is deleted; it must be active to log artifacts")
        return info

    # ------------------------------------------------------------------ writes

    async def upload(
        self,
        info: RunInfo,
        path: str,
        body: AsyncIterator[bytes],
        declared_size: int | None,
    ) -> Uploaded:
        """Store the body (streamed), charge it to the tenant, log run.artifact_logged and wait
        for its projection. `info`: from writable_run, checked before the body is read."""
        path = artifact_path(path)
        tenant_id = self._principal.tenant_id
        gate = self._writer.quotas
        if gate is not None:  # a tenant past its events/s quota: refused before the body streams in
            refused = gate.refuse_early(tenant_id, self._principal.authorizer.snapshot.quota(tenant_id))
            if refused is not None:
                raise refused
        quota = await self._artifacts.quota(tenant_id)
        if declared_size is not None and not quota.room_for(declared_size):
            raise _quota_error(quota, declared_size)
        room = None if quota.limit is None else max(0, quota.limit - quota.used)
        try:
            # The blob's lock is held from the store's commit to the charge's (blob_locks.py).
            async with self._artifacts.blob_charge() as blob:
                digest, size = await self._store.put_stream(body, max_size=room, before_commit=blob.hold)
                await blob.charge(tenant_id, digest, size)
        except SizeLimitExceeded:
            raise _quota_error(quota, None) from None
        except BlobTooLarge as exc:
            raise InvalidParameter(f"the artifact is too large: {exc}") from None
        except QuotaReached as exc:
            # The blob may be another upload's too: a sweeper removes it if nothing references it.
            raise _quota_error(exc.quota, exc.size) from None
        row = ArtifactRow(path, size, digest, media_type_for(path))
        payload = {"path": path, "size": size, "digest": digest, "media_type": row.media_type}
        event = build_event(
            self._principal,
            EventType.ARTIFACT_LOGGED,
            payload,
            run_id=info.run_id,
            experiment_id=info.experiment_id,
        )
        return Uploaded(row, await self._writer.write(self._principal, [event]))

    # ------------------------------------------------------------------ reads

    async def file(self, run_id: str, path: str, experiment_id: str | None = None) -> ArtifactRow:
        """The logged file at `path` of a run the caller may read; 404 otherwise."""
        path = artifact_path(path)
        located, _ = await self.run(run_id, experiment_id)
        row = await self._artifacts.get(located.tenant_id, run_id, path)
        if row is None:
            raise NotFound(f"run {run_id} has no artifact {path!r}")
        return row

    async def download(self, row: ArtifactRow, byte_range: ByteRange | None) -> Download:
        """The file's bytes (or a range of them), streamed from the store."""
        offset, length = (0, None) if byte_range is None else (byte_range.offset, byte_range.length)
        try:
            chunks = await self._store.open(row.digest, offset, length)
        except BlobNotFound:
            raise NotFound(
                f"the content of artifact {row.path!r} ({row.digest}) is missing from the artifact store"
            ) from None
        return Download(row, byte_range, chunks)

    async def listing(
        self, run_id: str, directory: str | None, experiment_id: str | None = None
    ) -> list[Entry]:
        """Files and subdirectories directly in `directory` ('' = the run's root), by name.

        A path naming a file, or nothing, lists nothing."""
        directory = directory_path(directory)
        located, _ = await self.run(run_id, experiment_id)
        rows = await self._artifacts.under(located.tenant_id, run_id, directory)
        return children(rows, directory)


def children(rows: list[ArtifactRow], directory: str) -> list[Entry]:
    """The entries directly in `directory` among `rows` (all below it, sorted by path)."""
    base = f"{directory}/" if directory else ""
    entries: dict[str, Entry] = {}
    for row in rows:
        rest = row.path[len(base) :]
        name, slash, _ = rest.partition("/")
        if slash:
            entries.setdefault(name + "/", Entry(base + name, is_dir=True))
        else:
            entries[name] = Entry(row.path, False, row.size, row.digest, row.media_type)
    return sorted(entries.values(), key=lambda e: (e.name, e.is_dir))
