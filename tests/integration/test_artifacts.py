"""Artifacts end to end: the S3 store against moto in server mode over real HTTP, and the API
(native routes and MLflow's proxy) with the local store and with S3, on the real broker,
projector and Postgres.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import httpx
import pytest

from runledger.artifacts import (
    ArtifactStore,
    BlobNotFound,
    BlobTooLarge,
    LocalArtifactStore,
    SizeLimitExceeded,
    open_store,
)
from runledger.artifacts.s3 import MIB, S3ArtifactStore, s3_client
from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.serve import ProjectorThread
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from services.api.artifacts.repository import ArtifactRepository
from services.api.retention.store import RetentionStore
from tests.integration.conftest import create_database
from tests.support.auth import Identity, provision
from tests.support.moto import MotoServer, serving_s3

pytestmark = pytest.mark.integration

T, U = "artifacts-a", "artifacts-b"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# ---------------------------------------------------------------------------------- moto


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 over HTTP; boto3 finds it through the standard AWS variables while the module runs."""
    with serving_s3(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def new_bucket() -> str:
    name = f"artifacts-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


def keys(bucket: str, prefix: str = "") -> list[str]:
    answer = s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def pending_uploads(bucket: str) -> list[str]:
    return [u["Key"] for u in s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.fixture
def s3_store(moto: MotoServer) -> S3ArtifactStore:
    return S3ArtifactStore(new_bucket(), "blobs/", part_size=5 * MIB)


async def read_all(store: Any, digest: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in await store.open(digest, offset, length)])


async def test_s3_small_blob_is_one_put_and_stored_once(s3_store: S3ArtifactStore) -> None:
    data = os.urandom(100_000)
    first = await s3_store.put_stream(pieces(data))
    second = await s3_store.put_stream(iter([data]))
    assert first == second == (sha(data), len(data))
    assert keys(s3_store.bucket) == [s3_store.key_of(first.digest)]
    assert s3_store.key_of(first.digest) == f"blobs/sha256/{first.digest[7:9]}/{first.digest[9:]}"
    assert await read_all(s3_store, first.digest) == data
    assert await read_all(s3_store, first.digest, 10, 5) == data[10:15]


async def test_s3_multipart_upload_commits_under_the_digest_and_dedups(s3_store: S3ArtifactStore) -> None:
    data = os.urandom(17 * MIB + 123)  # 4 parts of 5 MiB
    digest, size = await s3_store.put_stream(pieces(data))
    assert (digest, size) == (sha(data), len(data))
    final = s3_store.key_of(digest)
    assert keys(s3_store.bucket) == [final]  # the temp object is gone
    assert pending_uploads(s3_store.bucket) == []
    assert await read_all(s3_store, digest) == data
    # Across a part boundary, and to the end.
    assert await read_all(s3_store, digest, 5 * MIB - 3, 10) == data[5 * MIB - 3 : 5 * MIB + 7]
    assert await read_all(s3_store, digest, len(data) - 4) == data[-4:]
    assert await s3_store.size(digest) == len(data)

    # The same bytes again: the multipart upload is aborted, nothing new is materialised.
    assert await s3_store.put_stream(pieces(data, 1 << 20)) == (digest, size)
    assert keys(s3_store.bucket) == [final] and pending_uploads(s3_store.bucket) == []


async def test_s3_failed_or_oversized_uploads_leave_nothing(
    s3_store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Iterator[bytes]:
        yield os.urandom(12 * MIB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await s3_store.put_stream(broken())
    with pytest.raises(SizeLimitExceeded):
        await s3_store.put_stream(pieces(os.urandom(12 * MIB)), max_size=11 * MIB)
    monkeypatch.setattr("runledger.artifacts.s3.MAX_PARTS", 2)  # S3 allows 10,000
    with pytest.raises(BlobTooLarge):
        await s3_store.put_stream(pieces(os.urandom(12 * MIB)))
    assert keys(s3_store.bucket) == [] and pending_uploads(s3_store.bucket) == []


async def test_s3_missing_blobs_and_delete(s3_store: S3ArtifactStore) -> None:
    missing = sha(b"missing")
    with pytest.raises(BlobNotFound):
        await s3_store.open(missing)
    assert not await s3_store.exists(missing) and await s3_store.size(missing) is None
    assert not await s3_store.delete(missing)
    digest, _ = await s3_store.put_stream(iter([b""]))
    assert digest == sha(b"") and await read_all(s3_store, digest) == b""
    assert await s3_store.delete(digest) and not await s3_store.exists(digest)


async def test_s3_upload_memory_stays_at_a_few_parts(s3_store: S3ArtifactStore) -> None:
    """64 MiB (13 parts of 5 MiB) streamed in and out: Python's peak stays a few parts,
    independent of the blob's size (bench/artifacts.py runs 2 GB)."""
    block = os.urandom(MIB)
    total = 64 * MIB

    def body() -> Iterator[bytes]:
        for i in range(total // MIB):
            piece = i.to_bytes(8, "big") + block[8:]
            yield from pieces(piece)

    tracemalloc.start()
    try:
        digest, size = await s3_store.put_stream(body())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        async for chunk in await s3_store.open(digest):
            hasher.update(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == total and digest == "sha256:" + hasher.hexdigest()
    assert put_peak < 6 * 5 * MIB, f"put peak {put_peak / MIB:.1f} MiB"
    assert get_peak < 8 * MIB, f"get peak {get_peak / MIB:.1f} MiB"


# ---------------------------------------------------------------------------------- API


@dataclass
class Stack:
    settings: Settings
    dsn: str
    clickhouse: ChdbClickHouse
    admin: Identity  # admin of T (the bootstrap key)
    viewer: Identity  # viewer of T
    intruder: Identity  # engineer of U


@pytest.fixture(scope="module")
async def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    topics = {f"runledger.events.v1.{suffix}": 4, f"runledger.events.dlq.{suffix}": 1}
    broker.ensure_topics(topics)
    events_topic, dlq_topic = list(topics)
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    key = generate_key()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        postgres_dsn=dsn,
        events_topic=events_topic,
        dlq_topic=dlq_topic,
        projector_group=f"projector-{suffix}",
        projector_max_wait_ms=20,
        default_tenant=T,
        bootstrap_api_key=key.token,
        write_wait_timeout_s=20,
        state_dir=tmp_path_factory.mktemp("artifacts-api"),
    )
    clickhouse = ChdbClickHouse(settings.chdb_path)
    clickhouse.migrate()
    projector = ProjectorThread(settings, clickhouse)
    projector.start()
    try:
        viewer = await provision(dsn, T, Role.VIEWER)
        intruder = await provision(dsn, U, Role.ENGINEER)
        yield Stack(settings, dsn, clickhouse, Identity(T, "", key), viewer, intruder)
    finally:
        projector.stop()
        clickhouse.close()


@dataclass
class Api:
    kind: str
    client: httpx.AsyncClient
    settings: Settings
    stack: Stack

    def blobs(self) -> list[str]:
        """Every blob the store holds (to count what dedup kept)."""
        store = open_store(self.settings)
        if isinstance(store, LocalArtifactStore):
            root = store.root / "sha256"
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert isinstance(store, S3ArtifactStore)
        return keys(store.bucket, store.prefix + "sha256/")


@pytest.fixture(scope="module", params=["local", "s3"])
async def api(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[Api]:
    if request.param == "s3":
        request.getfixturevalue("moto")
        uri = f"s3://{new_bucket()}/runledger/artifacts"
    else:
        uri = str(stack.settings.state_dir / f"blobs-{uuid.uuid4().hex[:6]}")
    settings = stack.settings.model_copy(update={"artifact_uri": uri})
    app = create_app(settings, stack.clickhouse)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60
        ) as client,
    ):
        for who in (stack.admin, stack.viewer, stack.intruder):
            for _ in range(100):  # the auth watcher loads new keys within a second
                if (await client.get("/api/v1/whoami", headers=who.headers)).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        yield Api(request.param, client, settings, stack)


def basic(who: Identity) -> httpx.BasicAuth:
    """What MLflow clients send: key id and secret as username and password."""
    return httpx.BasicAuth(who.key.key_id, who.key.secret)


async def new_run(api: Api, who: Identity, experiment: str = "artifacts") -> tuple[str, str]:
    r = await api.client.post("/api/v1/runs", json={"experiment_name": experiment}, headers=who.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    return body["run"]["info"]["experiment_id"], body["run_id"]


async def test_mlflow_proxy_put_get_and_list(api: Api) -> None:
    exp, run = await new_run(api, api.stack.admin)
    weights, notes = os.urandom(3 * MIB + 5), b"hello artifacts\n"
    auth = basic(api.stack.admin)
    base = f"{PROXY}/{exp}/{run}/artifacts"
    for path, data in (("model/weights.bin", weights), ("notes.txt", notes), ("model/sub/x.json", b"{}")):
        r = await api.client.put(f"{base}/{path}", content=data, auth=auth)
        assert (r.status_code, r.json()) == (200, {}), r.text

    got = await api.client.get(f"{base}/model/weights.bin", auth=auth)
    assert got.status_code == 200 and got.content == weights
    assert got.headers["content-length"] == str(len(weights))
    assert got.headers["x-artifact-digest"] == sha(weights)
    text = await api.client.get(f"{base}/notes.txt", auth=auth)
    assert text.content == notes and text.headers["content-type"].startswith("text/plain")

    async def listing(path: str) -> Any:
        r = await api.client.get(PROXY, params={"path": path}, auth=auth)
        assert r.status_code == 200, r.text
        return r.json()

    assert await listing(f"{exp}/{run}/artifacts") == {
        "files": [
            {"path": "model", "is_dir": True},
            {"path": "notes.txt", "is_dir": False, "file_size": len(notes)},
        ]
    }
    assert await listing(f"{exp}/{run}/artifacts/model") == {
        "files": [
            {"path": "sub", "is_dir": True},
            {"path": "weights.bin", "is_dir": False, "file_size": len(weights)},
        ]
    }
    assert await listing(f"{exp}/{run}/artifacts/model/") == await listing(f"{exp}/{run}/artifacts/model")
    assert await listing(f"{exp}/{run}/artifacts/notes.txt") == {}  # a file
    assert await listing(f"{exp}/{run}/artifacts/nothing") == {}  # missing
    assert await listing(f"{exp}/{'0' * 32}/artifacts") == {}  # no such run
    assert await listing(f"0/{run}/artifacts") == {}  # the run is not of that experiment

    missing = await api.client.get(f"{base}/model/nothing.bin", auth=auth)
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    wrong_exp = await api.client.put(f"{PROXY}/0/{run}/artifacts/x.txt", content=b"x", auth=auth)
    assert wrong_exp.status_code == 404


async def test_native_routes_ranges_and_bad_paths(api: Api) -> None:
    _, run = await new_run(api, api.stack.admin)
    h = api.stack.admin.headers
    data = os.urandom(MIB + 7)
    r = await api.client.put(f"/api/v1/runs/{run}/artifacts/data/blob.bin", content=data, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["projected"] is True and body["run_id"] == run
    assert body["artifact"] == {
        "path": "data/blob.bin",
        "size": len(data),
        "digest": sha(data),
        "media_type": "application/octet-stream",
    }
    got = await api.client.get(f"/api/v1/runs/{run}/artifacts/data/blob.bin", headers=h)
    assert got.content == data and got.headers["etag"] == f'"{sha(data)[7:]}"'
    part = await api.client.get(
        f"/api/v1/runs/{run}/artifacts/data/blob.bin", headers={**h, "Range": "bytes=100-199"}
    )
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    beyond = await api.client.get(
        f"/api/v1/runs/{run}/artifacts/data/blob.bin", headers={**h, "Range": f"bytes={len(data)}-"}
    )
    assert beyond.status_code == 416

    # Overwrite: the path now names other bytes.
    r = await api.client.put(f"/api/v1/runs/{run}/artifacts/data/blob.bin", content=b"v2", headers=h)
    assert r.status_code == 201
    assert (await api.client.get(f"/api/v1/runs/{run}/artifacts/data/blob.bin", headers=h)).content == b"v2"

    listed = await api.client.get(f"/api/v1/runs/{run}/artifacts", headers=h)
    assert listed.json() == {"root": "", "files": [{"path": "data", "is_dir": True, "file_size": None,
                                                     "digest": None, "media_type": None}]}  # fmt: skip
    sub = (await api.client.get(f"/api/v1/runs/{run}/artifacts", params={"path": "data"}, headers=h)).json()
    assert [(f["path"], f["file_size"], f["digest"]) for f in sub["files"]] == [
        ("data/blob.bin", 2, sha(b"v2"))
    ]

    # Uploaded HTML is served inertly: no script runs on the API's origin (stored XSS).
    page = b"<html><script>fetch('/api/v1/me')</script></html>"
    r = await api.client.put(f"/api/v1/runs/{run}/artifacts/report.html", content=page, headers=h)
    assert r.status_code == 201
    got = await api.client.get(f"/api/v1/runs/{run}/artifacts/report.html", headers=h)
    assert got.content == page and got.headers["content-type"].startswith("text/html")
    assert got.headers["content-security-policy"].startswith("sandbox;")
    assert got.headers["x-content-type-options"] == "nosniff"

    for bad in ("a/%2E%2E/b", "%2E%2E/x", "/etc/passwd", "a//b"):
        r = await api.client.put(f"/api/v1/runs/{run}/artifacts/{bad}", content=b"x", headers=h)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = await api.client.get(f"/api/v1/runs/{run}/artifacts", params={"path": "../x"}, headers=h)
    assert r.status_code == 400


async def test_the_same_bytes_in_two_runs_are_one_blob(api: Api) -> None:
    exp1, run1 = await new_run(api, api.stack.admin, "dedup-1")
    exp2, run2 = await new_run(api, api.stack.admin, "dedup-2")
    data = os.urandom(12 * MIB)  # multipart on S3 (8 MiB parts)
    before = api.blobs()
    usage_before = await _usage(api.stack.dsn, T)
    r1 = await api.client.put(
        f"{PROXY}/{exp1}/{run1}/artifacts/dataset.bin", content=data, auth=basic(api.stack.admin)
    )
    r2 = await api.client.put(
        f"/api/v1/runs/{run2}/artifacts/copy/of/dataset.bin", content=data, headers=api.stack.admin.headers
    )
    assert r1.status_code == 200 and r2.status_code == 201
    after = api.blobs()
    assert len(after) == len(before) + 1
    for exp, run, path in ((exp1, run1, "dataset.bin"), (exp2, run2, "copy/of/dataset.bin")):
        got = await api.client.get(f"{PROXY}/{exp}/{run}/artifacts/{path}", auth=basic(api.stack.admin))
        assert got.content == data
    conn = await asyncpg.connect(api.stack.dsn)
    try:
        rows = await conn.fetch(
            "SELECT run_id, digest FROM artifacts WHERE digest = $1 ORDER BY run_id", sha(data)
        )
    finally:
        await conn.close()
    assert sorted(r["run_id"] for r in rows) == sorted([run1, run2])
    assert await _usage(api.stack.dsn, T) == usage_before + len(data)  # charged once


async def test_other_tenants_see_nothing_and_viewers_cannot_write(api: Api) -> None:
    exp, run = await new_run(api, api.stack.admin)
    url = f"{PROXY}/{exp}/{run}/artifacts/secret.txt"
    assert (await api.client.put(url, content=b"secret", auth=basic(api.stack.admin))).status_code == 200

    intruder = api.stack.intruder
    for method, target in (
        ("GET", url),
        ("PUT", url),
        ("GET", f"/api/v1/runs/{run}/artifacts/secret.txt"),
        ("PUT", f"/api/v1/runs/{run}/artifacts/secret.txt"),
        ("GET", f"/api/v1/runs/{run}/artifacts"),
    ):
        r = await api.client.request(
            method, target, content=b"x" if method == "PUT" else None, auth=basic(intruder)
        )
        assert r.status_code == 404, (method, target, r.text)
        assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    hidden = await api.client.get(PROXY, params={"path": f"{exp}/{run}/artifacts"}, auth=basic(intruder))
    assert hidden.status_code == 200 and hidden.json() == {}

    viewer = api.stack.viewer
    denied = await api.client.put(url, content=b"overwrite", auth=basic(viewer))
    assert denied.status_code == 403 and denied.json()["error_code"] == "PERMISSION_DENIED"
    denied = await api.client.put(f"/api/v1/runs/{run}/artifacts/v.txt", content=b"v", headers=viewer.headers)
    assert denied.status_code == 403
    assert (await api.client.get(url, auth=basic(viewer))).content == b"secret"
    assert (await api.client.get(url, auth=("nobody", "wrong"))).status_code == 401


async def test_storage_quota(api: Api) -> None:
    tenant = f"quota-{api.kind}-{uuid.uuid4().hex[:6]}"
    who = await provision(api.stack.dsn, tenant, Role.ENGINEER)
    for _ in range(100):
        if (await api.client.get("/api/v1/whoami", headers=who.headers)).status_code == 200:
            break
        await asyncio.sleep(0.05)
    conn = await asyncpg.connect(api.stack.dsn)
    try:
        await conn.execute(
            "INSERT INTO tenant_quotas (tenant_id, max_artifact_bytes) VALUES ($1, 1000)"
            " ON CONFLICT (tenant_id) DO UPDATE SET max_artifact_bytes = 1000",
            tenant,
        )
    finally:
        await conn.close()
    _, run1 = await new_run(api, who, "q1")
    _, run2 = await new_run(api, who, "q2")
    first = os.urandom(400)

    async def put(run: str, path: str, content: Any) -> httpx.Response:
        return await api.client.put(
            f"/api/v1/runs/{run}/artifacts/{path}", content=content, headers=who.headers
        )

    assert (await put(run1, "a.bin", first)).status_code == 201
    # The same bytes again (another run, another path) fit and cost nothing more.
    assert (await put(run2, "b.bin", first)).status_code == 201
    assert await _usage(api.stack.dsn, tenant) == 400

    blobs = api.blobs()
    refused = await put(run1, "big.bin", os.urandom(700))
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "artifact storage quota of 1000 bytes" in body["message"] and "stores 400 bytes" in body["message"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: cut off once past the quota
        for _ in range(7):
            yield os.urandom(100)

    refused = await put(run1, "big.bin", chunked())
    assert refused.status_code == 429, refused.text
    assert api.blobs() == blobs  # nothing stored
    listed = (await api.client.get(f"/api/v1/runs/{run1}/artifacts", headers=who.headers)).json()
    assert [f["path"] for f in listed["files"]] == ["a.bin"]
    assert await _usage(api.stack.dsn, tenant) == 400
    assert (await put(run1, "small.bin", os.urandom(600))).status_code == 201  # exactly up to the quota
    assert await _usage(api.stack.dsn, tenant) == 1000


async def _usage(dsn: str, tenant: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT artifact_bytes FROM tenant_usage WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()
    return int(value or 0)


# ------------------------------------------------------------- uploads against the sweeper


class HeldDeletes:
    """The API's real store, but each delete waits until the test lets it go: a sweep then
    stays inside its delete transaction (holding the blobs' locks) as long as the test needs."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.deleting = asyncio.Event()
        self.go = asyncio.Event()

    async def delete(self, digest: str) -> bool:
        self.deleting.set()
        await self.go.wait()
        return await self.store.delete(digest)


async def _lock_waiters(pool: asyncpg.Pool[Any]) -> int:
    return int(
        await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    )


@pytest.mark.parametrize("size", [1000, 9 * MIB], ids=["one-put", "multipart"])
async def test_an_upload_during_the_sweeps_delete_of_its_blob_stores_it_again(api: Api, size: int) -> None:
    """The bytes are stored and nothing references them, so a sweep deletes the blob. An upload
    of the same bytes arriving meanwhile waits for the delete, then stores the blob again: its
    logged artifact can be read. Without the blob's lock the upload found the blob still there,
    recorded it, and the delete then removed it under the new artifact."""
    data = os.urandom(size)
    store = open_store(api.settings)
    digest, _ = await store.put_stream(pieces(data))
    exp, run = await new_run(api, api.stack.admin, "sweep-race")
    held = HeldDeletes(store)
    conn = await asyncpg.connect(api.stack.dsn)
    pool = await asyncpg.create_pool(api.stack.dsn, min_size=1, max_size=2)
    try:
        sweep = asyncio.create_task(
            RetentionStore(pool, api.stack.clickhouse).delete_blobs(conn, cast(ArtifactStore, held), [digest])
        )
        await asyncio.wait_for(held.deleting.wait(), 10)  # checked: unreferenced; the delete is next
        upload = asyncio.create_task(
            api.client.put(
                f"{PROXY}/{exp}/{run}/artifacts/data.bin", content=data, auth=basic(api.stack.admin)
            )
        )
        for _ in range(200):
            if upload.done() or await _lock_waiters(pool) == 1:
                break
            await asyncio.sleep(0.02)
        answered_before_the_delete = upload.done()
        held.go.set()
        assert await sweep == ([digest], [])
        assert (await upload).status_code == 200
        got = await api.client.get(f"{PROXY}/{exp}/{run}/artifacts/data.bin", auth=basic(api.stack.admin))
        assert got.status_code == 200 and got.content == data
        assert not answered_before_the_delete  # it waited on the blob's lock
    finally:
        await pool.close()
        await conn.close()


async def test_a_sweep_waits_for_an_upload_recording_the_blob_and_keeps_it(api: Api) -> None:
    """An upload holding the blob's lock (its store found the blob, its charge not committed
    yet) makes the sweep wait; the sweep then sees the new record and keeps the blob."""
    data = os.urandom(2000)
    store = open_store(api.settings)
    digest, size = await store.put_stream(pieces(data))
    conn = await asyncpg.connect(api.stack.dsn)
    pool = await asyncpg.create_pool(api.stack.dsn, min_size=1, max_size=3)
    try:
        async with ArtifactRepository(pool).blob_charge() as blob:
            await blob.hold(digest)
            sweep = asyncio.create_task(
                RetentionStore(pool, api.stack.clickhouse).delete_blobs(conn, store, [digest])
            )
            for _ in range(200):
                if await _lock_waiters(pool) == 1:
                    break
                await asyncio.sleep(0.02)
            assert await _lock_waiters(pool) == 1 and not sweep.done()
            assert await blob.charge(U, digest, size)
        assert await sweep == ([], [digest])
        assert await store.exists(digest)
    finally:
        await pool.close()
        await conn.close()
