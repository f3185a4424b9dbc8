"""Artifact storage: content-addressed blobs on a local directory or S3 (see base.py)."""

from __future__ import annotations

from pathlib import Path

from runledger.artifacts.base import (
    DIGEST_PREFIX,
    ArtifactStore,
    ArtifactStoreError,
    BeforeCommit,
    BlobNotFound,
    BlobTooLarge,
    ChunkSource,
    SizeLimitExceeded,
    StoredBlob,
    blob_path,
    hex_of,
)
from runledger.artifacts.local import LocalArtifactStore
from runledger.config import Settings

MIB = 1 << 20

__all__ = [
    "DIGEST_PREFIX",
    "ArtifactStore",
    "ArtifactStoreError",
    "BeforeCommit",
    "BlobNotFound",
    "BlobTooLarge",
    "ChunkSource",
    "LocalArtifactStore",
    "SizeLimitExceeded",
    "StoredBlob",
    "blob_path",
    "hex_of",
    "open_store",
]


def open_store(settings: Settings) -> ArtifactStore:
    """The store RUNLEDGER_ARTIFACT_URI names: s3://bucket/prefix, a directory, or <state dir>/artifacts."""
    uri = settings.artifact_uri.strip()
    if uri.startswith("s3://"):
        from runledger.artifacts.s3 import S3ArtifactStore  # boto3 only where S3 is used

        return S3ArtifactStore.from_uri(uri, part_size=settings.artifact_part_size_mb * MIB)
    if not uri:
        return LocalArtifactStore(settings.state_dir / "artifacts")
    if uri.startswith("file://"):
        return LocalArtifactStore(Path(uri.removeprefix("file://")))
    if "://" in uri:
        raise ValueError(
            f"RUNLEDGER_ARTIFACT_URI: unsupported scheme in {uri!r} (use s3://, file:// or a path)"
        )
    return LocalArtifactStore(Path(uri))
