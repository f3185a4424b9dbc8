"""Per-blob advisory locks: an upload's commit and a retention sweep's delete of the same blob
exclude each other.

Blobs are shared by content, so an upload of bytes that are stored already only records that
its tenant holds them (`artifact_blobs`). A sweep deletes a blob once no row references it.
Without a lock, a re-upload could find the blob stored, a sweep then check (nothing references
it yet) and delete it, and the upload record and log a blob that is gone.

An upload holds its digest's lock shared from just before its store looks for the blob until
its `artifact_blobs` record commits; a sweep holds it exclusively while it checks references
and deletes. Transaction-scoped locks: a crashed holder's lock goes with its connection.
"""

from __future__ import annotations

from collections.abc import Iterable

from runledger.artifacts import hex_of
from runledger.stores.postgres import PgConnection

# The two-key form (space, key) of Postgres advisory locks never collides with a one-key lock
# such as the sweep lock. 32 bits of the digest: two blobs sharing them only wait for each other.
BLOB_LOCK_SPACE = 0x524C4221


def blob_lock_key(digest: str) -> int:
    """The signed 32-bit lock key of a "sha256:<hex>" digest."""
    unsigned = int(hex_of(digest)[:8], 16)
    return unsigned - (1 << 32) if unsigned >= 1 << 31 else unsigned


async def lock_for_upload(conn: PgConnection, digest: str) -> None:
    """Hold the blob's lock shared until `conn`'s transaction ends (uploads do not wait on each other)."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", BLOB_LOCK_SPACE, blob_lock_key(digest))


async def lock_for_delete(conn: PgConnection, digests: Iterable[str]) -> None:
    """Hold the blobs' locks exclusively until `conn`'s transaction ends, waiting for uploads in
    their commit; taken in key order, so two deleting transactions cannot deadlock."""
    keys = sorted({blob_lock_key(d) for d in digests})  # unnest keeps the array's order
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int[]) AS k", BLOB_LOCK_SPACE, keys
    )
