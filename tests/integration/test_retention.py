"""Retention end to end: a seeded dataset with hand-computed expectations, on the real broker,
projector, Postgres, chdb, and the artifact store on local disk and on S3 (moto over HTTP).

Metric points age from when RunLedger received them (metric_points.ingested_at), not from
their client timestamp. Each seeded point is its own event; once seeded, the module ages
them: it rewrites the ingested_at of each point and of its archived event (so that replay
sees the same ages) to the time given below as "recv". Tenant T keeps metric points forever
while it is seeded (aged past its retention, a point would be taken by the TTL at the next
merge); the plan is previewed under the seed defaults (metric points 365 days, artifacts 183
days, production model binaries forever), which T then sets, applying them at once. Times are
relative to NOW (the plan's as_of):

run_old      started -400 d, ended -399 d
  loss @ -400 d recv -399 d, @ -380 d recv -380 d, @ -370 d recv -366 d (go), @ -300 d recv -300 d (stays)
  acc @ -366 d recv -364 d (stays: logged long ago, received late, like an offline run synced)
  acc @ -364 d recv -366 d (goes: a recent client timestamp does not keep an old point)
  model/weights.bin (P)  kept: binary of model version clf/1, once in Production
  data/old.csv (S)       goes; blob S stays (run_new logs the same bytes)
  logs/train.log (L)     goes with its blob
run_mid      started -200 d, ended -190 d
  loss @ -200 d recv -200 d (stays)
  out/a.txt (A), out/dup1.txt + out/dup2.txt (D, twice), out/x.bin (X): all go; blobs A and
  D go, X stays (tenant U's run logs the same bytes)
run_running  started -190 d, never ended (ages from its start)
  ckpt/last.pt (C)       goes with its blob
run_new      started -10 d, ended -9 d
  loss @ -10 d recv -10 d; data/copy.csv (S)
run_u (U)    started -400 d, ended -399 d; loss @ -100 d recv -100 d; x.bin (X): U is never swept here
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from runledger.artifacts import open_store
from runledger.artifacts.s3 import s3_client
from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.cli import main as runledger_cli
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import decode, envelope_dict, metric_arrays, producer
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType
from runledger.retention import TTL_GRACE_DAYS, RetentionPolicy, plan_for
from runledger.retention_cli import plan_text
from runledger.serve import ProjectorThread
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.app import create_app
from tests.support.auth import Identity, provision
from tests.support.inprocess import migrated_database, module_settings
from tests.support.moto import MotoServer, serving_s3

pytestmark = pytest.mark.integration

T, U = "retention-t", "retention-u"
DAY = 86_400_000
NOW = int(datetime.now(UTC).replace(microsecond=0).timestamp() * 1000)
API = "/api/v1"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BLOBS = {name: f"{name} bytes {uuid.uuid4().hex}\n".encode() * (i + 1) for i, name in enumerate("PSLADXC")}


@dataclass
class Stack:
    settings: Settings
    dsn: str
    clickhouse: ChdbClickHouse
    client: httpx.AsyncClient
    admin: Identity  # admin of T and platform superadmin (the bootstrap key)
    viewer: Identity  # viewer of T
    engineer: Identity  # engineer of T
    u_admin: Identity  # admin of U
    runs: dict[str, tuple[str, str]]  # name -> (experiment_id, run_id)
    projector: ProjectorThread


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _run(
    client: httpx.AsyncClient,
    who: Identity,
    experiment: str,
    start: int,
    end: int | None,
    metrics: list[tuple[str, int, int]],
    files: dict[str, str],
) -> tuple[str, str]:
    """A run started at `start`, with points (key, step, timestamp) and files (path -> blob), ended at `end`."""
    body = await _ok(
        await client.post(
            f"{API}/runs", json={"experiment_name": experiment, "start_time": start}, headers=who.headers
        ),
        201,
    )
    exp, run = body["run"]["info"]["experiment_id"], body["run_id"]
    for k, s, ts in metrics:  # one event per point: the module ages each on its own (_age)
        point = {"key": k, "value": float(s), "step": s, "timestamp": ts}
        await _ok(
            await client.post(f"{API}/runs/{run}/metrics", json={"metrics": [point]}, headers=who.headers)
        )
    for path, blob in files.items():
        await _ok(
            await client.put(f"{API}/runs/{run}/artifacts/{path}", content=BLOBS[blob], headers=who.headers),
            201,
        )
    if end is not None:
        await _ok(
            await client.post(
                f"{API}/runs/{run}/status", json={"status": "FINISHED", "end_time": end}, headers=who.headers
            )
        )
    return exp, run


async def _register_version(client: httpx.AsyncClient, who: Identity, exp: str, run: str, stage: str) -> None:
    event = envelope_dict(
        tenant_id=who.tenant_id,
        type=EventType.MODEL_VERSION_REGISTERED,
        payload={"model_name": "clf", "version": 1, "source": f"runs:/{run}/model", "stage": stage},
        producer=producer("test"),
        run_id=run,
        experiment_id=exp,
    )
    await _ok(await client.post(f"{API}/events", json=[event], headers=who.headers))


# When each seeded point was received, by its client timestamp (all distinct), in days before NOW.
RECEIVED = {
    NOW - 400 * DAY: 399,
    NOW - 380 * DAY: 380,
    NOW - 370 * DAY: 366,
    NOW - 300 * DAY: 300,
    NOW - 366 * DAY: 364,
    NOW - 364 * DAY: 366,
    NOW - 200 * DAY: 200,
    NOW - 10 * DAY: 10,
    NOW - 100 * DAY: 100,
}


def _age(clickhouse: ChdbClickHouse, tenants: tuple[str, ...], received: dict[int, int]) -> None:
    """Pretend each point (by client timestamp) was received `received[ts]` days before NOW: its
    metric_points.ingested_at and its event's events_archive.ingested_at, which replay restores."""
    archived = clickhouse.query_arrow(
        "SELECT toString(event_id) AS id, body FROM runledger.events_archive"
        " WHERE tenant_id IN {t:Array(String)} AND type = 'run.metrics_logged'",
        {"t": "[" + ",".join(f"'{t}'" for t in tenants) + "]"},
    ).to_pylist()
    events: dict[str, int] = {}
    for row in archived:
        payload = decode(row["body"].encode()).payload
        assert isinstance(payload, MetricColumns)
        timestamps = metric_arrays(payload)[3].tolist()
        assert len(timestamps) == 1, "one point per seeded event"
        events[row["id"]] = received[timestamps[0]]
    assert sorted(events.values()) == sorted(received.values())
    by_event = ", ".join(
        f"event_id = toUUID('{e}'), fromUnixTimestamp64Milli({NOW - d * DAY}, 'UTC')"
        for e, d in events.items()
    )
    by_point = ", ".join(
        f"timestamp = fromUnixTimestamp64Milli({ts}, 'UTC'), toDateTime({(NOW - d * DAY) // 1000})"
        for ts, d in received.items()
    )
    where = "tenant_id IN (" + ",".join(f"'{t}'" for t in tenants) + ")"
    clickhouse.command(
        f"ALTER TABLE runledger.events_archive UPDATE ingested_at = multiIf({by_event}, ingested_at)"
        f" WHERE {where} AND type = 'run.metrics_logged' SETTINGS mutations_sync = 2"
    )
    clickhouse.command(
        f"ALTER TABLE runledger.metric_points UPDATE ingested_at = multiIf({by_point}, ingested_at)"
        f" WHERE {where} SETTINGS mutations_sync = 2"
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 over HTTP; boto3 finds it through the standard AWS variables while the module runs."""
    with serving_s3(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="module", params=["local", "s3"])
async def stack(
    request: pytest.FixtureRequest,
    broker: EmbeddedBroker,
    postgres: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    state = tmp_path_factory.mktemp("retention")
    if request.param == "s3":
        request.getfixturevalue("moto")
        bucket = f"retention-{uuid.uuid4().hex[:12]}"
        s3_client().create_bucket(Bucket=bucket)
        artifact_uri = f"s3://{bucket}/runledger/artifacts"
    else:
        artifact_uri = str(state / "blobs")
    key = generate_key()
    dsn = await migrated_database(postgres)
    settings = module_settings(
        broker,
        state,
        T,
        postgres_dsn=dsn,
        bootstrap_api_key=key.token,
        artifact_uri=artifact_uri,
        retention_sweep_interval_s=0,
    )
    clickhouse = ChdbClickHouse(settings.chdb_path)
    clickhouse.migrate()
    projector = ProjectorThread(settings, clickhouse)
    projector.start()
    app = create_app(settings, clickhouse)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60
            ) as client,
        ):
            viewer = await provision(dsn, T, Role.VIEWER)
            engineer = await provision(dsn, T, Role.ENGINEER)
            u_admin = await provision(dsn, U, Role.ADMIN)
            admin = Identity(T, "", key)
            for who in (admin, viewer, engineer, u_admin):
                for _ in range(100):  # the auth watcher loads new keys within a second
                    if (await client.get(f"{API}/whoami", headers=who.headers)).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
            keep_points = await _ok(
                await client.put(
                    f"{API}/retention-policy",
                    json={"metric_points_days": None, "artifacts_days": None},
                    headers=admin.headers,
                )
            )
            assert keep_points["metric_points_days"] is None and keep_points["applied"]["events"] == 0
            runs = {
                "old": await _run(
                    client,
                    admin,
                    "retention",
                    NOW - 400 * DAY,
                    NOW - 399 * DAY,
                    [
                        ("loss", 0, NOW - 400 * DAY),
                        ("loss", 1, NOW - 380 * DAY),
                        ("loss", 2, NOW - 370 * DAY),
                        ("loss", 3, NOW - 300 * DAY),
                        ("acc", 0, NOW - 366 * DAY),
                        ("acc", 1, NOW - 364 * DAY),
                    ],
                    {"model/weights.bin": "P", "data/old.csv": "S", "logs/train.log": "L"},
                ),
                "mid": await _run(
                    client,
                    admin,
                    "retention",
                    NOW - 200 * DAY,
                    NOW - 190 * DAY,
                    [("loss", 0, NOW - 200 * DAY)],
                    {"out/a.txt": "A", "out/dup1.txt": "D", "out/dup2.txt": "D", "out/x.bin": "X"},
                ),
                "running": await _run(
                    client, admin, "retention", NOW - 190 * DAY, None, [], {"ckpt/last.pt": "C"}
                ),
                "new": await _run(
                    client,
                    admin,
                    "retention",
                    NOW - 10 * DAY,
                    NOW - 9 * DAY,
                    [("loss", 0, NOW - 10 * DAY)],
                    {"data/copy.csv": "S"},
                ),
                "u": await _run(
                    client,
                    u_admin,
                    "retention-u",
                    NOW - 400 * DAY,
                    NOW - 399 * DAY,
                    [("loss", 0, NOW - 100 * DAY)],
                    {"x.bin": "X"},
                ),
            }
            _age(clickhouse, (T, U), RECEIVED)
            exp, run = runs["old"]
            # Production once, archived since: the binary stays protected.
            await _register_version(client, admin, exp, run, "Production")
            await _register_version(client, admin, exp, run, "Archived")
            yield Stack(settings, dsn, clickhouse, client, admin, viewer, engineer, u_admin, runs, projector)
    finally:
        projector.stop()
        clickhouse.close()


def _expected_plan(stack: Stack) -> dict[str, Any]:
    old, mid, running = stack.runs["old"], stack.runs["mid"], stack.runs["running"]

    def art(run: tuple[str, str], path: str, blob: str, ended: int) -> dict[str, Any]:
        data = BLOBS[blob]
        return {
            "run_id": run[1],
            "experiment_id": run[0],
            "path": path,
            "digest": sha(data),
            "size": len(data),
            "run_ended": ended,
        }

    series = [
        {
            "run_id": old[1],
            "experiment_id": old[0],
            "key": "acc",
            "points": 1,
            # Reported by client timestamp; it goes because it was received 366 days ago.
            "first_timestamp": NOW - 364 * DAY,
            "last_timestamp": NOW - 364 * DAY,
        },
        {
            "run_id": old[1],
            "experiment_id": old[0],
            "key": "loss",
            "points": 3,
            "first_timestamp": NOW - 400 * DAY,
            "last_timestamp": NOW - 370 * DAY,
        },
    ]
    artifacts = sorted(
        [
            art(old, "data/old.csv", "S", NOW - 399 * DAY),
            art(old, "logs/train.log", "L", NOW - 399 * DAY),
            art(mid, "out/a.txt", "A", NOW - 190 * DAY),
            art(mid, "out/dup1.txt", "D", NOW - 190 * DAY),
            art(mid, "out/dup2.txt", "D", NOW - 190 * DAY),
            art(mid, "out/x.bin", "X", NOW - 190 * DAY),
            art(running, "ckpt/last.pt", "C", NOW - 190 * DAY),
        ],
        key=lambda a: (a["run_id"], a["path"]),
    )
    blobs = sorted(
        ({"digest": sha(BLOBS[b]), "size": len(BLOBS[b])} for b in "LADC"), key=lambda b: b["digest"]
    )
    return {
        "tenant_id": T,
        "policy": {"metric_points_days": 365, "artifacts_days": 183, "keep_production_models": True},
        "as_of": NOW,
        "metric_cutoff": NOW - 365 * DAY,
        "artifact_cutoff": NOW - 183 * DAY,
        "totals": {
            "series": 2,
            "points": 4,
            "artifacts": 7,
            "artifact_bytes": sum(len(BLOBS[b]) for b in "SLADDXC"),
            "blobs": 4,
            "freed_bytes": sum(len(BLOBS[b]) for b in "LADC"),
            "kept_production_artifacts": 1,
        },
        "series": series,
        "artifacts": artifacts,
        "kept": [
            {
                "run_id": old[1],
                "path": "model/weights.bin",
                "digest": sha(BLOBS["P"]),
                "size": len(BLOBS["P"]),
                "reason": "binary of model version clf/1, ever in Production",
            }
        ],
        "blobs": blobs,
    }


def _points(stack: Stack, tenant: str) -> list[tuple[str, str, int, int]]:
    """(run, key, timestamp ms, retention_days) of the tenant's stored points."""
    rows = stack.clickhouse.query_arrow(
        "SELECT run_id, key, toInt64(toUnixTimestamp64Milli(timestamp)) AS ts, retention_days"
        " FROM runledger.metric_points WHERE tenant_id = {t:String} ORDER BY run_id, key, ts",
        {"t": tenant},
    ).to_pylist()
    return [(r["run_id"], r["key"], r["ts"], r["retention_days"]) for r in rows]


async def _artifact_rows(stack: Stack, tenant: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(stack.dsn)
    try:
        rows = await conn.fetch(
            "SELECT run_id, path FROM artifacts WHERE tenant_id = $1 ORDER BY run_id, path", tenant
        )
    finally:
        await conn.close()
    return [(r["run_id"], r["path"]) for r in rows]


async def _stored(stack: Stack) -> set[str]:
    store = open_store(stack.settings)
    return {name for name, data in BLOBS.items() if await store.exists(sha(data))}


async def test_policy_reads_and_who_may_change_it(stack: Stack) -> None:
    defaults = await _ok(await stack.client.get(f"{API}/retention-policy", headers=stack.u_admin.headers))
    assert defaults["is_default"] and defaults["tenant_id"] == U
    assert (
        defaults["metric_points_days"],
        defaults["artifacts_days"],
        defaults["keep_production_models"],
    ) == (
        365,
        183,
        True,
    )
    for who in (stack.viewer, stack.engineer, stack.admin):
        body = await _ok(await stack.client.get(f"{API}/retention-policy", headers=who.headers))
        assert (
            not body["is_default"] and body["tenant_id"] == T and body["updated_by"] == stack.admin.key.key_id
        )
        assert (body["metric_points_days"], body["artifacts_days"]) == (None, None)
    for who in (stack.viewer, stack.engineer):
        refused = await stack.client.put(
            f"{API}/retention-policy", json={"metric_points_days": 1}, headers=who.headers
        )
        assert refused.status_code == 403, refused.text
        for method, path in (("GET", "/retention/plan"), ("POST", "/retention/sweep")):
            r = await stack.client.request(method, f"{API}{path}", headers=who.headers)
            assert r.status_code == 403, (path, r.text)
    # An engineer's key may write the tenant's events, but a policy event it signs is not applied.
    forged = envelope_dict(
        tenant_id=T,
        type=EventType.RETENTION_POLICY_SET,
        payload={"metric_points_days": 1, "artifacts_days": 1},
        producer=producer("test"),
    )
    await _ok(await stack.client.post(f"{API}/events", json=[forged], headers=stack.engineer.headers))
    body = await _ok(await stack.client.get(f"{API}/retention-policy", headers=stack.admin.headers))
    assert (body["metric_points_days"], body["artifacts_days"]) == (None, None)
    invalid = await stack.client.put(
        f"{API}/retention-policy", json={"metric_points_days": 0}, headers=stack.admin.headers
    )
    assert invalid.status_code in (400, 422), invalid.text


async def test_plan_lists_exactly_the_hand_computed_items(stack: Stack) -> None:
    # T keeps everything for now.
    current = await _ok(
        await stack.client.get(f"{API}/retention/plan", params={"as_of": NOW}, headers=stack.admin.headers)
    )
    assert current["series"] == [] and current["artifacts"] == [] and current["metric_cutoff"] is None
    preview = {"as_of": NOW, "metric_points_days": 365, "artifacts_days": 183}
    plan = await _ok(
        await stack.client.get(f"{API}/retention/plan", params=preview, headers=stack.admin.headers)
    )
    assert plan == _expected_plan(stack)
    text = plan_text(plan)
    assert "4 points in 2 series" in text and "7 files" in text and "clf/1" in text
    # Another tenant's admin cannot plan T; the platform superadmin can plan U.
    other = await stack.client.get(
        f"{API}/retention/plan", params={"tenant": T}, headers=stack.u_admin.headers
    )
    assert other.status_code == 403
    u_plan = await _ok(
        await stack.client.get(
            f"{API}/retention/plan", params={"tenant": U, "as_of": NOW}, headers=stack.admin.headers
        )
    )
    assert u_plan["totals"]["points"] == 0 and [a["path"] for a in u_plan["artifacts"]] == ["x.bin"]
    # Nothing changed.
    assert await _stored(stack) == set("PSLADXC")
    assert len(_points(stack, T)) == 8


@pytest.fixture
def live_api(stack: Stack) -> Iterator[str]:
    """The API over real HTTP (its own app on the module's stores), for the CLI."""
    app = create_app(stack.settings, stack.clickhouse)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


async def test_cli_plan_prints_the_same_plan(
    stack: Stack, live_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    as_of = datetime.fromtimestamp(NOW / 1000, UTC).isoformat()
    common = ["--url", live_api, "--api-key", stack.admin.key.token]
    plan = ["retention", "plan", "--as-of", as_of, "--metric-points-days", "365", "--artifacts-days", "183"]
    assert await asyncio.to_thread(runledger_cli, [*plan, *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _expected_plan(stack)
    assert await asyncio.to_thread(runledger_cli, [*plan, *common]) == 0
    text = capsys.readouterr().out
    old = stack.runs["old"][1]
    assert "4 points in 2 series" in text and "7 files" in text
    assert f"  {old}  loss  3  " in text and f"  {old}  logs/train.log  {len(BLOBS['L'])}  " in text
    assert "clf/1, ever in Production" in text
    assert await asyncio.to_thread(runledger_cli, ["retention", "show", *common]) == 0
    assert "metric points:           forever" in capsys.readouterr().out
    viewer = ["--url", live_api, "--api-key", stack.viewer.key.token]
    assert await asyncio.to_thread(runledger_cli, ["retention", "plan", *viewer]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err


async def test_apply_deletes_exactly_the_plan_and_records_it(stack: Stack) -> None:
    before_u = _points(stack, U)
    # Setting the seed defaults applies them at once.
    body = await _ok(
        await stack.client.put(
            f"{API}/retention-policy",
            json={"metric_points_days": 365, "artifacts_days": 183, "keep_production_models": True},
            headers=stack.admin.headers,
        )
    )
    report = body["applied"]
    assert report["projected"] and report["points"] == 4 and report["artifacts"] == 7
    assert report["runs_with_metrics_expired"] == 1 and report["events"] == 4
    assert sorted(report["blobs_deleted"]) == sorted(sha(BLOBS[b]) for b in "LADC")

    old, mid, running, new = (stack.runs[n][1] for n in ("old", "mid", "running", "new"))
    assert await _artifact_rows(stack, T) == sorted([(old, "model/weights.bin"), (new, "data/copy.csv")])
    assert await _artifact_rows(stack, U) == [(stack.runs["u"][1], "x.bin")]
    # Shared blobs (S within T, X with U) and the production binary survive.
    assert await _stored(stack) == set("PSX")
    points = {(r, k, ts) for r, k, ts, _ in _points(stack, T)}
    assert points == {
        (old, "loss", NOW - 300 * DAY),
        (old, "acc", NOW - 366 * DAY),  # received 364 days ago: stays
        (mid, "loss", NOW - 200 * DAY),
        (new, "loss", NOW - 10 * DAY),
    }
    assert _points(stack, U) == before_u

    archived = stack.clickhouse.query_arrow(
        "SELECT type, run_id, body FROM runledger.events_archive WHERE tenant_id = {t:String}"
        " AND type IN ('run.metrics_expired', 'run.artifacts_expired') ORDER BY type, run_id",
        {"t": T},
    ).to_pylist()
    assert [(r["type"], r["run_id"]) for r in archived] == sorted(
        [
            ("run.artifacts_expired", old),
            ("run.artifacts_expired", mid),
            ("run.artifacts_expired", running),
            ("run.metrics_expired", old),
        ]
    )
    # The tenant's storage is refunded for the blobs it no longer references (X included: U pays for it).
    conn = await asyncpg.connect(stack.dsn)
    try:
        used = await conn.fetchval("SELECT artifact_bytes FROM tenant_usage WHERE tenant_id = $1", T)
        pending = await conn.fetchval("SELECT count(*) FROM retention_pending_blobs")
    finally:
        await conn.close()
    assert used == len(BLOBS["P"]) + len(BLOBS["S"]) and pending == 0

    # Applied again: nothing left to do; the plan keeps only the production binary.
    again = await _ok(
        await stack.client.post(f"{API}/retention/sweep", params={"as_of": NOW}, headers=stack.admin.headers)
    )
    assert again["events"] == 0 and again["blobs_deleted"] == []
    plan = await _ok(
        await stack.client.get(f"{API}/retention/plan", params={"as_of": NOW}, headers=stack.admin.headers)
    )
    assert plan["series"] == [] and plan["artifacts"] == [] and len(plan["kept"]) == 1
    future = await stack.client.post(
        f"{API}/retention/sweep", params={"as_of": NOW + 365 * DAY}, headers=stack.admin.headers
    )
    assert future.status_code == 400


async def test_one_sweep_at_a_time(stack: Stack) -> None:
    """Another process (another API replica) holds the sweep lock: a second sweep is refused."""
    from services.api.retention.store import SWEEP_LOCK

    conn = await asyncpg.connect(stack.dsn)
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK)
        busy = await stack.client.post(f"{API}/retention/sweep", headers=stack.admin.headers)
        assert busy.status_code == 409 and busy.json()["error_code"] == "INVALID_STATE", busy.text
        await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)
        done = await _ok(await stack.client.post(f"{API}/retention/sweep", headers=stack.admin.headers))
        assert done["events"] == 0
    finally:
        await conn.close()


async def test_policy_change_reapplies_to_stored_points_through_the_ttl(stack: Stack) -> None:
    old, mid, new = (stack.runs[n][1] for n in ("old", "mid", "new"))
    body = await _ok(
        await stack.client.put(
            f"{API}/retention-policy",
            json={"metric_points_days": 30, "artifacts_days": None, "keep_production_models": True},
            headers=stack.admin.headers,
        )
    )
    assert not body["is_default"] and body["metric_points_days"] == 30 and body["artifacts_days"] is None
    assert body["updated_by"] == stack.admin.key.key_id
    # Applied at once: the points past 30 days were deleted by a sweep that recorded them, and
    # what stays carries 30 days for the TTL; U keeps the default.
    assert _points(stack, T) == [(new, "loss", NOW - 10 * DAY, 30)]
    assert [d for *_, d in _points(stack, U)] == [365]
    recorded = (
        stack.clickhouse.query_arrow(
            "SELECT run_id FROM runledger.events_archive WHERE tenant_id = {t:String}"
            " AND type = 'run.metrics_expired' ORDER BY run_id",
            {"t": T},
        )
        .column("run_id")
        .to_pylist()
    )
    assert recorded == sorted([old, old, mid])

    # New points of T are stamped with the new retention and the time they arrive by the
    # projector: one logged with a client timestamp older than the retention is not expired by
    # the next merge (it was just received).
    await _ok(
        await stack.client.post(
            f"{API}/runs/{new}/metrics",
            json={
                "metrics": [
                    {"key": "late", "value": 1.0, "step": 0, "timestamp": NOW - 40 * DAY},
                    {"key": "late", "value": 2.0, "step": 1, "timestamp": NOW - 1 * DAY},
                ]
            },
            headers=stack.admin.headers,
        )
    )
    late = [p for p in _points(stack, T) if p[1] == "late"]
    assert [d for *_, d in late] == [30] * len(late)
    stack.clickhouse.command("OPTIMIZE TABLE runledger.metric_points FINAL")
    assert [(k, ts) for _, k, ts, _ in _points(stack, T)] == [
        ("late", NOW - 40 * DAY),
        ("late", NOW - 1 * DAY),
        ("loss", NOW - 10 * DAY),
    ]
    # artifacts_days null: nothing of T's artifacts ever expires now.
    plan = await _ok(
        await stack.client.get(
            f"{API}/retention/plan", params={"as_of": NOW + 3650 * DAY}, headers=stack.admin.headers
        )
    )
    assert plan["artifacts"] == [] and plan["artifact_cutoff"] is None


async def test_other_tenant_untouched(stack: Stack) -> None:
    u_run = stack.runs["u"][1]
    assert [(r, k, ts) for r, k, ts, _ in _points(stack, U)] == [(u_run, "loss", NOW - 100 * DAY)]
    assert await _artifact_rows(stack, U) == [(u_run, "x.bin")]
    body = await _ok(await stack.client.get(f"{API}/retention-policy", headers=stack.u_admin.headers))
    assert body["is_default"] and body["tenant_id"] == U


async def test_periodic_sweep_is_signed_by_the_platform_key(stack: Stack) -> None:
    """An API process sweeps every tenant by itself (here U, whose x.bin expired long ago),
    signing the events with the platform key: the gate admits them for another tenant."""
    u_run = stack.runs["u"][1]
    settings = stack.settings.model_copy(update={"retention_sweep_interval_s": 0.2})
    app = create_app(settings, stack.clickhouse)
    rows = await _artifact_rows(stack, U)
    async with app.router.lifespan_context(app):
        for _ in range(150):
            rows = await _artifact_rows(stack, U)
            if not rows and await _stored(stack) == set("PS"):
                break
            await asyncio.sleep(0.1)
    assert rows == []
    # X was U's only reference left: its blob is gone; P (production) and S (run_new) stay.
    assert await _stored(stack) == set("PS")
    archived = stack.clickhouse.query_arrow(
        "SELECT run_id, JSONExtractString(body, 'key_id') AS key_id FROM runledger.events_archive"
        " WHERE tenant_id = {t:String} AND type = 'run.artifacts_expired'",
        {"t": U},
    ).to_pylist()
    assert archived == [{"run_id": u_run, "key_id": stack.admin.key.key_id}]


async def test_replay_rebuilds_what_retention_left(stack: Stack) -> None:
    """Replay re-applies the expiry events in order (the artifact rows stay gone) and stamps the
    re-inserted points with each tenant's policy and the time their event was first received
    (the archive's), so they keep their age and the TTL takes exactly the expired ones."""
    from services.api.admin.service import replay_projections

    def state() -> tuple[list[tuple[str, str, int, int]], list[tuple[str, str, int, int]]]:
        stack.clickhouse.command("OPTIMIZE TABLE runledger.metric_points FINAL")
        return _points(stack, T), _points(stack, U)

    points = state()
    artifacts = (await _artifact_rows(stack, T), await _artifact_rows(stack, U))
    projector = stack.projector.projector
    lock = getattr(projector, "write_lock", None)
    assert lock is not None
    pool = await asyncpg.create_pool(stack.dsn, min_size=1, max_size=2)
    try:
        await replay_projections(stack.clickhouse, pool, lock)
    finally:
        await pool.close()
    assert state() == points
    assert (await _artifact_rows(stack, T), await _artifact_rows(stack, U)) == artifacts
    body = await _ok(await stack.client.get(f"{API}/retention-policy", headers=stack.admin.headers))
    assert (body["metric_points_days"], body["artifacts_days"]) == (30, None)


async def test_the_ttl_removes_what_the_plan_counts(stack: Stack) -> None:
    """The backstop and the plan apply one rule: the plan at `as_of` = now - the grace day counts
    exactly the points the TTL removes now (OPTIMIZE ... FINAL forces it). Points are inserted
    directly, with explicit ingested_at values to simulate age, and client timestamps that
    would say the opposite."""
    from services.api.retention.store import RetentionStore

    tenant, days = "retention-ttl", 30
    now = datetime.now(UTC).replace(microsecond=0)
    # (step, received days ago, client timestamp days ago): hours away from both cutoffs.
    points = [
        (0, 5, 1000),  # fresh, an old client timestamp: stays
        (1, 29.5, 29.5),  # stays
        (2, 30.5, 0),  # past the policy, within the grace day: the sweeper's, not yet the TTL's
        (3, 31.25, 0),  # past the grace day too: goes, though its client timestamp is today
        (4, 40, 40),
        (5, 400, 2),
    ]
    values = ", ".join(
        f"('{tenant}', 'e', 'r', 'k', {step}, fromUnixTimestamp64Milli({int((now.timestamp() - ts * 86400) * 1000)},"
        f" 'UTC'), {step}.0, {days}, toDateTime({int(now.timestamp() - recv * 86400)}))"
        for step, recv, ts in points
    )
    stack.clickhouse.command(
        "INSERT INTO runledger.metric_points (tenant_id, experiment_id, run_id, key, step, timestamp, value,"
        f" retention_days, ingested_at) VALUES {values}"
    )
    pool = await asyncpg.create_pool(stack.dsn, min_size=1, max_size=2)
    try:
        store = RetentionStore(pool, stack.clickhouse)
        policy = RetentionPolicy(metric_points_days=days)
        backstop = await plan_for(store, tenant, now - timedelta(days=TTL_GRACE_DAYS), policy)
        sweep = await plan_for(store, tenant, now, policy)
    finally:
        await pool.close()
    assert (backstop.points, sweep.points) == (3, 4)

    def steps() -> list[int]:
        return (
            stack.clickhouse.query_arrow(
                "SELECT step FROM runledger.metric_points WHERE tenant_id = {t:String} ORDER BY step",
                {"t": tenant},
            )
            .column("step")
            .to_pylist()
        )

    assert len(steps()) == len(points)
    stack.clickhouse.command("OPTIMIZE TABLE runledger.metric_points FINAL")
    assert steps() == [0, 1, 2]
    assert len(points) - len(steps()) == backstop.points
    stack.clickhouse.command(
        "ALTER TABLE runledger.metric_points DELETE WHERE tenant_id = {t:String} SETTINGS mutations_sync = 2",
        {"t": tenant},
    )


async def test_a_point_with_an_old_client_timestamp_survives_the_ttl(stack: Stack) -> None:
    """Regression: a point logged with a 3-year-old client timestamp (an offline run synced late,
    an MLflow import) was deleted by the TTL on arrival. Through the normal path (API, broker,
    projector), under the default policy, it is still there after the TTL is forced."""
    tenant = "retention-v"
    who = await provision(stack.dsn, tenant, Role.ADMIN)
    for _ in range(100):  # the auth watcher loads new keys within a second
        if (await stack.client.get(f"{API}/whoami", headers=who.headers)).status_code == 200:
            break
        await asyncio.sleep(0.05)
    ancient = NOW - 3 * 365 * DAY
    _, run = await _run(stack.client, who, "imported", ancient, ancient + DAY, [("loss", 0, ancient)], {})
    policy = await _ok(await stack.client.get(f"{API}/retention-policy", headers=who.headers))
    assert policy["is_default"] and policy["metric_points_days"] == 365
    stack.clickhouse.command("OPTIMIZE TABLE runledger.metric_points FINAL")
    assert _points(stack, tenant) == [(run, "loss", ancient, 365)]
    plan = await _ok(await stack.client.get(f"{API}/retention/plan", headers=who.headers))
    assert plan["series"] == []
