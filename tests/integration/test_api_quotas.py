"""Tenant quotas (429 + Retry-After) and the tagging policy in reject mode, through the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Quota, Role, TaggingPolicy
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import encode, envelope_dict, new_run_id, producer
from runledger.events.models import EventType
from runledger.stores.postgres import directory
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from services.api.publisher import OutgoingEvent, PublishResult
from tests.integration.conftest import create_database
from tests.support.auth import Identity, provision
from tests.unit.test_api_errors import NoClickHouse, RecordingPublisher

pytestmark = pytest.mark.integration

NOISY, QUIET, FULL, STRICT = "q-noisy", "q-quiet", "q-full", "q-strict"
HOSTILE, NEIGHBOUR, HEAVY = "q-hostile", "q-neighbour", "q-heavy"
BURST, BYSTANDER = "q-burst", "q-bystander"
RUN = "9" * 32
API = "/api/v1"


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.executemany(
            "INSERT INTO runs (tenant_id, run_id, experiment_id, name, status, start_time)"
            " VALUES ($1, $2, '0', 'r', 'RUNNING', 1)",
            [(t, RUN) for t in (NOISY, QUIET, FULL, HOSTILE, NEIGHBOUR, HEAVY, BURST, BYSTANDER)],
        )
    finally:
        await conn.close()
    return dsn


async def _app_client(
    dsn: str, tarpit_max_s: float, publisher: RecordingPublisher | None = None, **settings_: Any
) -> AsyncGenerator[httpx.AsyncClient, None]:
    settings = Settings(
        postgres_dsn=dsn,
        bootstrap_api_key=generate_key().token,
        **{"write_wait_timeout_s": 0.05, **settings_},
        api_tarpit_max_s=tarpit_max_s,
    )
    app = create_app(settings, NoClickHouse(), publisher=publisher or RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        yield c


@pytest.fixture(scope="module")
async def client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    # Without the tarpit: these tests retry at once on purpose, to see every answer of the quota.
    async for c in _app_client(dsn, tarpit_max_s=0):
        yield c


@pytest.fixture(scope="module")
async def tarpit_client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _app_client(dsn, tarpit_max_s=2.0):
        yield c


async def _engineer(client: httpx.AsyncClient, dsn: str, tenant: str) -> Identity:
    identity = await provision(dsn, tenant, Role.ENGINEER)
    for _ in range(100):  # the auth watcher loads new keys within a second
        if (await client.get(f"{API}/whoami", headers=identity.headers)).status_code == 200:
            break
        await asyncio.sleep(0.05)
    return identity


async def _configure(dsn: str, change: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await change(conn)
    finally:
        await conn.close()
    await asyncio.sleep(1.0)  # the watcher's next reload (0.5 s polls)


def _metrics(n: int) -> dict[str, Any]:
    return {"metrics": [{"key": "m", "value": float(i), "step": i} for i in range(n)]}


async def test_events_per_second_quota_is_429_with_retry_after_and_other_tenants_go_on(
    client: httpx.AsyncClient, dsn: str
) -> None:
    noisy = await _engineer(client, dsn, NOISY)
    quiet = await _engineer(client, dsn, QUIET)
    await _configure(dsn, lambda conn: directory.set_quota(conn, NOISY, Quota(events_per_second=2)))
    statuses = []
    refused: httpx.Response | None = None
    for _ in range(30):  # 30 events at once: the bucket holds 4 (2 s at 2/s)
        r = await client.post(f"{API}/runs/{RUN}/tags", json={"tags": {"k": "v"}}, headers=noisy.headers)
        statuses.append(r.status_code)
        if r.status_code == 429:
            refused = r
    assert statuses.count(202) >= 4 and 429 in statuses and set(statuses) == {202, 429}
    assert refused is not None
    assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "events-per-second quota of 2" in refused.json()["message"]
    assert int(refused.headers["retry-after"]) >= 1
    # Over the quota a write is refused before its body is read (a flood costs little):
    # even a body that is not JSON gets the 429, not a 400.
    early = await client.post(f"{API}/runs/{RUN}/tags", content=b"{not json", headers=noisy.headers)
    assert early.status_code == 429 and early.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    # Reads are not rate-limited.
    assert (await client.get(f"{API}/runs/{RUN}", headers=noisy.headers)).status_code == 200
    for _ in range(30):  # the quiet tenant is not held back by the noisy one
        r = await client.post(f"{API}/runs/{RUN}/tags", json={"tags": {"k": "v"}}, headers=quiet.headers)
        assert r.status_code == 202, r.text
    await asyncio.sleep(int(refused.headers["retry-after"]))
    again = await client.post(f"{API}/runs/{RUN}/tags", json={"tags": {"k": "v"}}, headers=noisy.headers)
    assert again.status_code == 202  # Retry-After was enough


async def test_a_retry_before_retry_after_is_held_and_other_tenants_are_not(
    tarpit_client: httpx.AsyncClient, dsn: str
) -> None:
    client = tarpit_client
    hostile = await _engineer(client, dsn, HOSTILE)
    neighbour = await _engineer(client, dsn, NEIGHBOUR)
    await _configure(dsn, lambda conn: directory.set_quota(conn, HOSTILE, Quota(events_per_second=1)))

    async def tag(identity: Identity) -> tuple[httpx.Response, float, float]:
        started = time.perf_counter()
        r = await client.post(f"{API}/runs/{RUN}/tags", json={"tags": {"k": "v"}}, headers=identity.headers)
        return r, started, time.perf_counter()

    for _ in range(4):  # the bucket holds 2 (2 s at 1/s)
        refused, _, refused_at = await tag(hostile)
        if refused.status_code == 429:
            break
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    # Retried at once, while the neighbour writes: the retry is held for the rest of
    # the Retry-After (then checked as if it had waited: a token is back, so 202); the
    # neighbour's write does not wait behind it.
    (retry, _, retried), (other, other_started, other_done) = await asyncio.gather(
        tag(hostile), tag(neighbour)
    )
    assert other.status_code == 202 and other_done - other_started < 0.5
    assert other_done < retried
    assert 0.7 < retried - refused_at < 1.6, retried - refused_at
    assert retry.status_code == 202, retry.text
    # A client that waits its Retry-After is not held.
    for _ in range(4):
        refused, _, refused_at = await tag(hostile)
        if refused.status_code == 429:
            break
    assert refused.status_code == 429
    await asyncio.sleep(int(refused.headers["retry-after"]))
    polite, started, done = await tag(hostile)
    assert polite.status_code == 202 and done - started < 0.5


async def test_stored_points_quota_is_429(client: httpx.AsyncClient, dsn: str) -> None:
    full = await _engineer(client, dsn, FULL)

    async def change(conn: asyncpg.Connection[Any]) -> None:
        await conn.execute("INSERT INTO tenant_usage (tenant_id, points) VALUES ($1, 95)", FULL)
        await directory.set_quota(conn, FULL, Quota(max_points=100))

    await _configure(dsn, change)
    ok = await client.post(f"{API}/runs/{RUN}/metrics", json=_metrics(5), headers=full.headers)
    assert ok.status_code == 202, ok.text
    over = await client.post(f"{API}/runs/{RUN}/metrics", json=_metrics(6), headers=full.headers)
    assert over.status_code == 429
    assert over.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "stored-points quota of 100 reached" in over.json()["message"]
    assert over.headers["retry-after"] == "60"
    tags = await client.post(f"{API}/runs/{RUN}/tags", json={"tags": {"k": "v"}}, headers=full.headers)
    assert tags.status_code == 202  # writes without points go on
    sdk = producer("test")
    event = envelope_dict(
        tenant_id=FULL, type=EventType.METRICS_LOGGED, run_id=RUN, experiment_id="0", producer=sdk,
        payload={"keys": ["m"], "key_index": [0] * 6, "values": [1.0] * 6, "steps": list(range(6)),
                 "timestamps": [1] * 6},
    )  # fmt: skip
    raw = await client.post(f"{API}/events", json=[orjson.loads(encode(event))], headers=full.headers)
    assert raw.status_code == 429, raw.text


async def test_points_per_second_quota_is_429_and_events_without_points_go_on(
    client: httpx.AsyncClient, dsn: str
) -> None:
    """Few events of many points: an events quota would not see them, a points quota does."""
    heavy = await _engineer(client, dsn, HEAVY)
    quota = Quota(events_per_second=1_000, points_per_second=100)  # 200 points banked
    await _configure(dsn, lambda conn: directory.set_quota(conn, HEAVY, quota))
    first = await client.post(f"{API}/runs/{RUN}/metrics", json=_metrics(150), headers=heavy.headers)
    assert first.status_code == 202, first.text
    over = await client.post(f"{API}/runs/{RUN}/metrics", json=_metrics(100), headers=heavy.headers)
    assert over.status_code == 429 and over.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert (
        "points-per-second quota of 100 exceeded (this request carries 100 points)" in over.json()["message"]
    )
    assert over.headers["retry-after"] == "1"
    tags = await client.post(f"{API}/runs/{RUN}/tags", json={"tags": {"k": "v"}}, headers=heavy.headers)
    assert tags.status_code == 202  # writes without points go on
    await asyncio.sleep(1.0)  # the Retry-After: 50 + 100 points banked again
    again = await client.post(f"{API}/runs/{RUN}/metrics", json=_metrics(100), headers=heavy.headers)
    assert again.status_code == 202, again.text


async def test_tagging_policy_in_reject_mode(client: httpx.AsyncClient, dsn: str) -> None:
    strict = await _engineer(client, dsn, STRICT)
    policy = TaggingPolicy({"project": (), "stage": ("dev", "prod")}, reject=True)
    await _configure(dsn, lambda conn: directory.set_tagging_policy(conn, STRICT, policy))
    r = await client.post(f"{API}/runs", json={"tags": {"stage": "qa"}}, headers=strict.headers)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "missing tag 'project'" in r.json()["message"]
    assert "'stage'='qa' is not one of ['dev', 'prod']" in r.json()["message"]
    ok = await client.post(
        f"{API}/runs", json={"tags": {"project": "x", "stage": "dev"}}, headers=strict.headers
    )
    assert ok.status_code == 202, ok.text
    sdk = producer("test")
    started = envelope_dict(
        tenant_id=STRICT, type=EventType.RUN_STARTED, run_id=new_run_id(), experiment_id="0", producer=sdk,
        payload={"name": "r", "start_time": 1, "tags": {"project": "x"}},
    )  # fmt: skip
    raw = await client.post(f"{API}/events", json=[orjson.loads(encode(started))], headers=strict.headers)
    assert raw.status_code == 400 and "missing tag 'stage'" in raw.json()["details"][0]["reason"]


class GatedPublisher(RecordingPublisher):
    """Holds the publishes of one tenant's events until `opened`, counting those held."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__()
        self._marker = f'"tenant_id":"{tenant_id}"'.encode()
        self.opened = asyncio.Event()
        self.held = self.most_held = 0

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
        if any(self._marker in event.value for event in events):
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                await self.opened.wait()
            finally:
                self.held -= 1
        return await super().publish(events)


async def test_a_burst_of_one_tenants_heavy_writes_leaves_another_tenants_alone(dsn: str) -> None:
    """At most RUNLEDGER_API_HEAVY_WRITES_PER_TENANT of a tenant's large writes are in progress;
    its others wait unread at the door, and another tenant's large write is not behind them."""
    publisher = GatedPublisher(BURST)
    apps = _app_client(
        dsn, 0, publisher, api_heavy_writes_per_tenant=2, api_heavy_write_bytes=1024, write_wait_timeout_s=1.0
    )
    client = await anext(apps)
    try:
        burst = await _engineer(client, dsn, BURST)
        bystander = await _engineer(client, dsn, BYSTANDER)
        heavy = _metrics(100)  # about 3 KB
        assert len(orjson.dumps(heavy)) > 1024

        async def write(identity: Identity, wait: bool) -> tuple[int, float]:
            started = time.perf_counter()
            params = {} if wait else {"wait": "false"}
            r = await client.post(
                f"{API}/runs/{RUN}/metrics", json=heavy, params=params, headers=identity.headers
            )
            return r.status_code, time.perf_counter() - started

        writes = [asyncio.create_task(write(burst, wait=False)) for _ in range(6)]
        for _ in range(100):
            if publisher.held == 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert publisher.held == 2  # the other four wait for a slot
        status, took = await write(bystander, wait=False)
        assert status == 202 and took < 0.5, took
        publisher.opened.set()
        assert [s for s, _ in await asyncio.gather(*writes)] == [202] * 6
        assert publisher.most_held == 2
        # A write waiting for its projection holds no slot: with both of them waiting (the
        # recording publisher never reports a projection: they wait the whole second), a
        # third is produced at once.
        waiting = [asyncio.create_task(write(burst, wait=True)) for _ in range(2)]
        await asyncio.sleep(0.2)
        status, took = await write(burst, wait=False)
        assert status == 202 and took < 0.5, took
        assert all(not w.done() for w in waiting)
        assert [s for s, _ in await asyncio.gather(*waiting)] == [202, 202]
    finally:
        await apps.aclose()
