"""The local artifact store (dedup, streaming, atomicity, flat memory) and artifact path rules."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runledger.artifacts import (
    ArtifactStore,
    BlobNotFound,
    LocalArtifactStore,
    SizeLimitExceeded,
    blob_path,
    hex_of,
    open_store,
)
from runledger.artifacts.base import rechunk
from runledger.artifacts.s3 import parse_s3_uri
from runledger.config import Settings
from services.api.artifacts.paths import (
    ByteRange,
    RangeNotSatisfiable,
    artifact_path,
    directory_path,
    media_type_for,
    parse_range,
)
from services.api.artifacts.repository import ArtifactRow
from services.api.artifacts.service import children
from services.api.errors import InvalidParameter

MIB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def apieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for piece in pieces(data, size):
        await asyncio.sleep(0)
        yield piece


async def read_all(store: ArtifactStore, digest: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in await store.open(digest, offset, length)])


def blob_files(root: Path) -> list[Path]:
    return [p for p in (root / "sha256").rglob("*") if p.is_file()] if (root / "sha256").exists() else []


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


async def test_put_stores_the_bytes_under_their_sha256_read_only(store: LocalArtifactStore) -> None:
    data = os.urandom(3 * MIB + 17)
    digest, size = await store.put_stream(pieces(data, 65536))
    assert (digest, size) == (digest_of(data), len(data))
    path = store.path_of(digest)
    assert path == store.root / "sha256" / digest[7:9] / digest[9:]
    assert path.read_bytes() == data
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert await read_all(store, digest) == data
    assert await store.exists(digest) and await store.size(digest) == len(data)
    assert list((store.root / "tmp").iterdir()) == []


async def test_the_same_bytes_are_stored_once_whatever_the_chunking(store: LocalArtifactStore) -> None:
    data = os.urandom(MIB + 3)
    first = await store.put_stream(pieces(data, 1000))
    second = await store.put_stream(apieces(data, 70_000))
    third = await store.put_stream(iter([data]))
    assert first == second == third
    assert blob_files(store.root) == [store.path_of(first.digest)]
    other = await store.put_stream(iter([data + b"!"]))
    assert other.digest != first.digest and len(blob_files(store.root)) == 2


async def test_concurrent_puts_of_the_same_bytes_leave_one_blob(store: LocalArtifactStore) -> None:
    data = os.urandom(2 * MIB)
    results = await asyncio.gather(*(store.put_stream(apieces(data, 100_000)) for _ in range(6)))
    assert len(set(results)) == 1
    assert blob_files(store.root) == [store.path_of(results[0].digest)]
    assert list((store.root / "tmp").iterdir()) == []


async def test_empty_blob(store: LocalArtifactStore) -> None:
    digest, size = await store.put_stream(iter([]))
    assert (digest, size) == (digest_of(b""), 0)
    assert await read_all(store, digest) == b""


async def test_ranges(store: LocalArtifactStore) -> None:
    data = os.urandom(3 * MIB)
    digest, _ = await store.put_stream(iter([data]))
    assert await read_all(store, digest, 10, 20) == data[10:30]
    assert await read_all(store, digest, MIB - 1, MIB + 2) == data[MIB - 1 : 2 * MIB + 1]
    assert await read_all(store, digest, 3 * MIB - 5) == data[-5:]
    assert await read_all(store, digest, 3 * MIB) == b""
    with pytest.raises(ValueError):
        await store.open(digest, -1)


async def test_a_failed_stream_stores_nothing(store: LocalArtifactStore) -> None:
    def broken() -> Iterator[bytes]:
        yield os.urandom(2 * MIB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put_stream(broken())
    assert blob_files(store.root) == []
    assert list((store.root / "tmp").iterdir()) == []


async def test_a_cancelled_upload_stores_nothing(store: LocalArtifactStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(MIB)
        started.set()
        await asyncio.sleep(60)
        yield b"never"

    task = asyncio.create_task(store.put_stream(slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert blob_files(store.root) == []
    assert list((store.root / "tmp").iterdir()) == []


async def test_max_size_stops_the_stream_and_stores_nothing(store: LocalArtifactStore) -> None:
    data = os.urandom(3 * MIB)
    with pytest.raises(SizeLimitExceeded):
        await store.put_stream(pieces(data, 65536), max_size=2 * MIB)
    assert blob_files(store.root) == []
    assert await store.put_stream(iter([data]), max_size=len(data)) == (digest_of(data), len(data))


async def test_missing_blobs_and_delete(store: LocalArtifactStore) -> None:
    missing = digest_of(b"missing")
    with pytest.raises(BlobNotFound):
        await store.open(missing)
    assert not await store.exists(missing) and await store.size(missing) is None
    assert not await store.delete(missing)
    digest, _ = await store.put_stream(iter([b"x"]))
    assert await store.delete(digest)
    assert not await store.exists(digest)


async def test_a_256_mib_stream_keeps_memory_flat(store: LocalArtifactStore) -> None:
    """256 MiB in and out; Python's peak allocation stays a few chunks (≈1 MiB each)."""
    block = os.urandom(MIB)
    total = 256 * MIB

    async def body() -> AsyncIterator[bytes]:
        for i in range(total // len(block)):
            # Every MiB differs (so nothing in the pipeline may collapse them), 64 KiB pieces
            # like a uvicorn request body.
            piece = i.to_bytes(8, "big") + block[8:]
            for start in range(0, len(piece), 65536):
                yield piece[start : start + 65536]

    tracemalloc.start()
    try:
        digest, size = await store.put_stream(body())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        read = 0
        async for chunk in await store.open(digest):
            hasher.update(chunk)
            read += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == read == total and digest == "sha256:" + hasher.hexdigest()
    assert put_peak < 8 * MIB, f"put peak {put_peak / MIB:.1f} MiB"
    assert get_peak < 8 * MIB, f"get peak {get_peak / MIB:.1f} MiB"


async def test_rechunk_gathers_small_pieces() -> None:
    out = [c async for c in rechunk(pieces(b"a" * 25, 3), 10)]
    assert [len(c) for c in out] == [10, 10, 5] and b"".join(out) == b"a" * 25
    with pytest.raises(SizeLimitExceeded):
        _ = [c async for c in rechunk(pieces(b"a" * 25, 3), 10, max_size=24)]


def test_digests_and_blob_paths() -> None:
    digest = digest_of(b"abc")
    assert hex_of(digest) == hashlib.sha256(b"abc").hexdigest()
    assert blob_path(digest) == f"sha256/{digest[7:9]}/{digest[9:]}"
    for bad in ("sha256:xyz", "md5:" + "0" * 64, "sha256:" + "A" * 64, "sha256:../../etc/passwd"):
        with pytest.raises(ValueError):
            blob_path(bad)


def test_store_selection(tmp_path: Path) -> None:
    local = open_store(Settings(state_dir=tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path / "artifacts"
    store = open_store(Settings(artifact_uri=f"file://{tmp_path}/blobs"))
    assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "blobs"
    store = open_store(Settings(artifact_uri=str(tmp_path / "plain")))
    assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "plain"
    with pytest.raises(ValueError):
        open_store(Settings(artifact_uri="gs://bucket/x"))
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(ValueError):
        parse_s3_uri("s3:///x")


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "../x", "a/../../b", "a/./b", "a//b", "a\\b", "C:/x", "a/b/", "x\x00y", "a" * 1025],
)
def test_bad_artifact_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidParameter):
        artifact_path(path)


def test_good_artifact_paths_and_directories() -> None:
    assert artifact_path("model/weights.bin") == "model/weights.bin"
    assert artifact_path("a b/ünï..code.txt") == "a b/ünï..code.txt"  # '..' inside a name is fine
    assert directory_path(None) == "" and directory_path("/model/") == "model"
    with pytest.raises(InvalidParameter):
        directory_path("../other-run")


def test_media_types() -> None:
    assert media_type_for("metrics.json") == "application/json"
    assert media_type_for("notes/readme.txt") == "text/plain"
    assert media_type_for("plot.png") == "image/png"
    assert media_type_for("model.pkl-without-known-ext") == "application/octet-stream"


def test_byte_ranges() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 10, 100)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 10, 100)
    assert parse_range("bytes=-5", 100) == ByteRange(95, 5, 100)
    assert parse_range("bytes=50-1000", 100) == ByteRange(50, 50, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file
    assert ByteRange(0, 10, 100).content_range == "bytes 0-9/100"
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=100-", 100)


def test_listing_children() -> None:
    def row(path: str) -> ArtifactRow:
        return ArtifactRow(path, len(path), digest_of(path.encode()), "text/plain")

    rows = [row(p) for p in sorted(["a.txt", "model/MLmodel", "model/data/x.pkl", "z/y/w"])]
    root = children(rows, "")
    assert [(e.path, e.is_dir, e.size) for e in root] == [
        ("a.txt", False, 5),
        ("model", True, None),
        ("z", True, None),
    ]
    model = children([r for r in rows if r.path.startswith("model/")], "model")
    assert [(e.path, e.name, e.is_dir) for e in model] == [
        ("model/MLmodel", "MLmodel", False),
        ("model/data", "data", True),
    ]
