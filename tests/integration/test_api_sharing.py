"""Narrowed grants and federated sharing through the API, on real Postgres and chdb.

OWNER shares one experiment read-only with GUEST. GUEST's readers see it (marked
`shared_from`) with its runs, metrics, documents and findings; nobody of GUEST can
write it; revoking the share hides it again within 5 seconds. A grant narrowed to
one experiment shows that experiment only, wherever experiments or runs are listed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Role, Share
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import encode, envelope_dict, experiment_id_for, producer
from runledger.events.models import EventType
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres import directory
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from tests.integration.conftest import create_database
from tests.support.auth import Identity, provision
from tests.unit.test_api_errors import RecordingPublisher

pytestmark = pytest.mark.integration

OWNER, GUEST = "share-owner", "share-guest"
SHARED = experiment_id_for(OWNER, "shared")
HIDDEN = experiment_id_for(OWNER, "hidden")
MINE = experiment_id_for(GUEST, "mine")
SR, HR, GR = "5" * 32, "6" * 32, "7" * 32  # runs of SHARED, HIDDEN (OWNER) and MINE (GUEST)
API = "/api/v1"


async def _seed(conn: asyncpg.Connection[Any]) -> None:
    await conn.executemany(
        "INSERT INTO experiments (tenant_id, experiment_id, name, creation_time, last_update_time)"
        " VALUES ($1, $2, $3, $4, $4)",
        [
            (OWNER, "0", "Default", 1),
            (OWNER, SHARED, "shared", 2),
            (OWNER, HIDDEN, "hidden", 3),
            (GUEST, "0", "Default", 1),
            (GUEST, MINE, "mine", 4),
        ],
    )
    await conn.execute("INSERT INTO experiment_tags VALUES ($1, $2, 'team', 'owners')", OWNER, SHARED)
    await conn.executemany(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, name, status, start_time) VALUES ($1, $2, $3, $4, 'RUNNING', $5)",
        [
            (OWNER, SR, SHARED, "shared-run", 10),
            (OWNER, HR, HIDDEN, "hidden-run", 20),
            (GUEST, GR, MINE, "mine", 30),
        ],
    )
    await conn.executemany(
        "INSERT INTO params VALUES ($1, $2, 'lr', $3)", [(OWNER, SR, "0.1"), (OWNER, HR, "0.2")]
    )
    await conn.execute("INSERT INTO latest_metrics VALUES ($1, $2, 'loss', 0.5, 9, 1009, 0)", OWNER, SR)
    await conn.execute(
        "INSERT INTO run_documents VALUES ($1, $2, 'code_state', $3::jsonb)", OWNER, SR, '{"commit": "abc"}'
    )
    await conn.executemany(
        "INSERT INTO findings (tenant_id, event_id, run_id, experiment_id, kind, body, occurred_at)"
        " VALUES ($1, $2, $3, $4, 'lint.x', '{}'::jsonb, now())",
        [(OWNER, uuid.uuid4(), SR, SHARED), (OWNER, uuid.uuid4(), HR, HIDDEN)],
    )


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClickHouse]:
    store = ChdbClickHouse(tmp_path_factory.mktemp("api-sharing") / "clickhouse")
    store.migrate()
    steps = np.arange(10, dtype=np.int64)
    store.insert_arrow(
        "metric_points",
        pa.table(
            {
                "tenant_id": [OWNER] * 10,
                "experiment_id": [SHARED] * 10,
                "run_id": [SR] * 10,
                "key": ["loss"] * 10,
                "step": steps,
                "timestamp": pa.array(1000 + steps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                "value": steps.astype(np.float64),
            }
        ),
    )
    yield store
    store.close()


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await _seed(conn)
    finally:
        await conn.close()
    return dsn


@pytest.fixture(scope="module")
async def client(dsn: str, clickhouse: ChdbClickHouse) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        postgres_dsn=dsn,
        default_tenant=OWNER,
        bootstrap_api_key=generate_key().token,
        write_wait_timeout_s=0.2,
    )
    app = create_app(settings, clickhouse, publisher=RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        yield c


async def _known(client: httpx.AsyncClient, *identities: Identity) -> None:
    for identity in identities:
        for _ in range(100):  # the auth watcher loads new keys within a second
            if (await client.get(f"{API}/whoami", headers=identity.headers)).status_code == 200:
                break
            await asyncio.sleep(0.05)


async def _get(client: httpx.AsyncClient, who: Identity, url: str, expect: int = 200, **params: Any) -> Any:
    r = await client.get(url, params=params, headers=who.headers)
    assert r.status_code == expect, r.text
    return r.json()


def _ids(experiments: dict[str, Any]) -> set[str]:
    return {e["experiment_id"] for e in experiments["experiments"]}


def _run_ids(runs: dict[str, Any]) -> set[str]:
    return {r["info"]["run_id"] for r in runs["runs"]}


async def test_a_grant_narrowed_to_one_experiment(client: httpx.AsyncClient, dsn: str) -> None:
    narrow = await provision(dsn, OWNER, Role.ENGINEER, experiment_id=SHARED)
    await _known(client, narrow)
    assert _ids(await _get(client, narrow, f"{API}/experiments")) == {SHARED}
    assert _run_ids(await _get(client, narrow, f"{API}/runs")) == {SR}
    assert _run_ids(await _get(client, narrow, f"{API}/runs", experiment_id=HIDDEN)) == set()
    findings = await _get(client, narrow, f"{API}/findings")
    assert {f["run_id"] for f in findings["findings"]} == {SR}
    await _get(client, narrow, f"{API}/runs/{SR}")
    for url in (f"{API}/experiments/{HIDDEN}", f"{API}/runs/{HR}", f"{API}/runs/{HR}/metrics"):
        await _get(client, narrow, url, 404)
    write = await client.post(f"{API}/runs/{SR}/tags", json={"tags": {"a": "1"}}, headers=narrow.headers)
    assert write.status_code == 202, write.text  # nothing projects the in-memory log
    hidden = await client.post(f"{API}/runs/{HR}/tags", json={"tags": {"a": "1"}}, headers=narrow.headers)
    assert hidden.status_code == 404
    create = await client.post(f"{API}/experiments", json={"name": "new"}, headers=narrow.headers)
    assert create.status_code == 403 and create.json()["error_code"] == "PERMISSION_DENIED"
    named = await client.post(f"{API}/runs", json={"experiment_name": "new"}, headers=narrow.headers)
    assert named.status_code == 403
    default = await client.post(f"{API}/runs", json={}, headers=narrow.headers)
    assert default.status_code == 403  # experiment "0" is not theirs either
    started = await client.post(f"{API}/runs", json={"experiment_id": SHARED}, headers=narrow.headers)
    assert started.status_code == 202, started.text


async def test_a_shared_experiment_is_readable_marked_and_read_only_then_revoked(
    client: httpx.AsyncClient, dsn: str
) -> None:
    viewer = await provision(dsn, GUEST, Role.VIEWER)
    engineer = await provision(dsn, GUEST, Role.ENGINEER)
    narrowed_elsewhere = await provision(dsn, GUEST, Role.VIEWER, experiment_id=MINE)
    share = Share(OWNER, SHARED, GUEST)
    conn = await asyncpg.connect(dsn)
    try:
        await directory.share_experiment(conn, share, "test")
        await _known(client, viewer, engineer, narrowed_elsewhere)
        for _ in range(100):
            if (await client.get(f"{API}/experiments/{SHARED}", headers=viewer.headers)).status_code == 200:
                break
            await asyncio.sleep(0.05)

        listed = await _get(client, viewer, f"{API}/experiments")
        by_id = {e["experiment_id"]: e for e in listed["experiments"]}
        assert set(by_id) == {"0", MINE, SHARED}  # not HIDDEN
        assert by_id[SHARED]["shared_from"] == OWNER and by_id[SHARED]["tags"] == {"team": "owners"}
        assert by_id[MINE]["shared_from"] is None
        one = await _get(client, viewer, f"{API}/experiments/{SHARED}")
        assert one["name"] == "shared" and one["shared_from"] == OWNER

        assert _run_ids(await _get(client, viewer, f"{API}/runs")) == {GR}  # a search names it
        assert _run_ids(await _get(client, viewer, f"{API}/runs", experiment_id=[SHARED, MINE])) == {SR, GR}
        run = await _get(client, viewer, f"{API}/runs/{SR}")
        assert run["params"] == {"lr": "0.1"} and run["metrics"]["loss"]["value"] == 0.5
        keys = await _get(client, viewer, f"{API}/runs/{SR}/metrics")
        assert [m["key"] for m in keys["metrics"]] == ["loss"]
        history = await _get(client, viewer, f"{API}/runs/{SR}/metrics/loss/history")
        assert history["steps"] == list(range(10))
        docs = await _get(client, viewer, f"{API}/runs/{SR}/documents")
        assert docs["code_state"]["commit"] == "abc"
        assert len((await _get(client, viewer, f"{API}/runs/{SR}/findings"))["findings"]) == 1
        listed_findings = await _get(client, viewer, f"{API}/findings", experiment_id=SHARED)
        assert {f["run_id"] for f in listed_findings["findings"]} == {SR}
        # The rest of OWNER stays invisible.
        for url in (f"{API}/experiments/{HIDDEN}", f"{API}/runs/{HR}"):
            await _get(client, viewer, url, 404)
        # A grant narrowed to another experiment does not reach the share.
        await _get(client, narrowed_elsewhere, f"{API}/experiments/{SHARED}", 404)
        assert _ids(await _get(client, narrowed_elsewhere, f"{API}/experiments")) == {MINE}

        sdk = producer("test")
        event = envelope_dict(
            tenant_id=GUEST, type=EventType.TAGS_SET, run_id=SR, experiment_id=SHARED, producer=sdk,
            payload={"tags": {"x": "1"}},
        )  # fmt: skip
        writes = [
            ("PATCH", f"{API}/experiments/{SHARED}", {"name": "taken"}),
            ("DELETE", f"{API}/experiments/{SHARED}", None),
            ("POST", f"{API}/runs", {"experiment_id": SHARED}),
            ("POST", f"{API}/runs/{SR}/tags", {"tags": {"x": "1"}}),
            ("POST", f"{API}/runs/{SR}/metrics", {"metrics": [{"key": "m", "value": 1}]}),
            ("DELETE", f"{API}/runs/{SR}", None),
            ("POST", f"{API}/events", [orjson.loads(encode(event))]),
        ]
        for method, url, body in writes:
            r = await client.request(method, url, json=body, headers=engineer.headers)
            assert r.status_code == 403, (method, url, r.text)

        await directory.unshare_experiment(conn, share)
        revoked_at = time.monotonic()
        while (await client.get(f"{API}/experiments/{SHARED}", headers=viewer.headers)).status_code != 404:
            assert time.monotonic() - revoked_at < 5.0, "the revoked share is still visible after 5 s"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - revoked_at
        assert elapsed < 5.0
        assert SHARED not in _ids(await _get(client, viewer, f"{API}/experiments"))
        for url in (f"{API}/runs/{SR}", f"{API}/runs/{SR}/metrics", f"{API}/runs/{SR}/documents"):
            await _get(client, viewer, url, 404)
        assert _run_ids(await _get(client, viewer, f"{API}/runs", experiment_id=SHARED)) == set()
    finally:
        await conn.close()


async def test_the_default_experiment_is_never_shared(client: httpx.AsyncClient, dsn: str) -> None:
    viewer = await provision(dsn, GUEST, Role.VIEWER)
    conn = await asyncpg.connect(dsn)
    try:
        await directory.share_experiment(conn, Share(OWNER, "0", GUEST), "test")
    finally:
        await conn.close()
    await _known(client, viewer)
    await asyncio.sleep(1.0)  # past a reload of the snapshot
    listed = await _get(client, viewer, f"{API}/experiments")
    assert [e["shared_from"] for e in listed["experiments"] if e["experiment_id"] == "0"] == [None]
