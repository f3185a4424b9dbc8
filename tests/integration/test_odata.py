"""The OData v4 feed (/odata/) over real HTTP: $metadata validated against the OASIS CSDL
schemas, every entity set paged through by a real OData client (python-odata, basic auth),
query options pushed down, errors as 400s, and cross-tenant / anonymous probes (the /odata
routes are outside the OpenAPI schema, so test_route_authorization does not walk them).
BusinessMetrics, the stakeholder roll-up, must give exactly the REST report's rows.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg
import httpx
import orjson
import pyarrow.parquet as pq
import pytest
import requests
import uvicorn
import xmlschema
from odata import ODataService  # type: ignore[import-untyped]

from runledger.auth.keys import ApiKey, generate_key
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.app import create_app
from tests.integration.test_business_metrics import as_report_rows
from tests.integration.test_exports import (
    ALPHA,
    ALPHA_RUNS,
    BETA,
    BETA_RUNS,
    LEAK,
    OTHER,
    POINT_RUNS,
    SECRET,
    STEPS,
    T,
    loss_at,
    seed_clickhouse,
    seed_postgres,
)
from tests.support.auth import Identity, provision
from tests.support.inprocess import migrated_database
from tests.unit.test_api_errors import RecordingPublisher

pytestmark = pytest.mark.integration

XSD = Path(__file__).parent.parent / "support" / "odata_xsd" / "edmx.xsd"
SETS = (
    "Experiments",
    "Runs",
    "RunParams",
    "RunTags",
    "RunMetrics",
    "MetricPoints",
    "Findings",
    "BusinessMetrics",
)
REVENUE, SAVINGS = "biz/revenue_lift", "biz/cost_savings"
# Model "churn" v1..v8 on alpha01..alpha08 (even versions in Production), v9 on the deleted
# alpha29 and v10 without a run (neither in the roll-up); "vision" v1 on beta00 (experiment BETA).
CHURN = [("churn", v, "Production" if v % 2 == 0 else "Staging", ALPHA_RUNS[v]) for v in range(1, 9)]
VERSIONS = [*CHURN, ("churn", 9, "Archived", ALPHA_RUNS[29]), ("vision", 1, "Production", BETA_RUNS[0])]
BIZ_LATEST = [(run, REVENUE, v / 100) for _, v, _, run in VERSIONS]
BIZ_LATEST += [(run, SAVINGS, 100.0 * v if v < 8 else float("inf")) for _, v, _, run in CHURN if v % 2 == 0]
BIZ_ROWS = len(CHURN) + 1 + 4  # revenue on 8 + 1 readable versions, savings on 4


async def seed_business(conn: asyncpg.Connection[Any]) -> None:
    """Declarations, model versions and their source runs' business metric values, both tenants."""
    await conn.executemany(
        "INSERT INTO business_metrics (tenant_id, key, category, unit, currency, owner, direction)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (T, REVENUE, "revenue_lift", "%", "", "growth-team", "max"),
            (T, SAVINGS, "cost_savings", "", "USD", "finops", "max"),
            (OTHER, REVENUE, "revenue_lift", "%", "", LEAK, "max"),
        ],
    )
    versions: list[tuple[str, str, int, str | None, str]] = [
        (T, m, v, run, stage) for m, v, stage, run in VERSIONS
    ]
    versions += [(T, "churn", 10, None, "None"), (OTHER, "churn", 1, "theirs", "Production")]
    await conn.executemany("INSERT INTO model_versions VALUES ($1, $2, $3, $4, '', $5)", versions)
    latest = [
        (T, run, key, value, 7, 1_700_000_000_000 + i) for i, (run, key, value) in enumerate(BIZ_LATEST)
    ]
    latest += [(OTHER, "theirs", REVENUE, 5.0, 0, 0)]
    await conn.executemany("INSERT INTO latest_metrics VALUES ($1, $2, $3, $4, $5, $6, 0)", latest)


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClickHouse]:
    store = ChdbClickHouse(tmp_path_factory.mktemp("odata") / "clickhouse")
    store.migrate()
    seed_clickhouse(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres, seed_postgres, seed_business)


@pytest.fixture(scope="module")
def admin_key() -> ApiKey:
    return generate_key()


@pytest.fixture(scope="module")
def server(dsn: str, clickhouse: ChdbClickHouse, admin_key: ApiKey) -> Iterator[str]:
    """The API on a real port (the OData client speaks HTTP through requests)."""
    settings = Settings(
        postgres_dsn=dsn, default_tenant=T, write_wait_timeout_s=1.5, bootstrap_api_key=admin_key.token
    )
    app = create_app(settings, clickhouse, publisher=RecordingPublisher())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve(sockets=[sock])), daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def root(server: str) -> str:
    return f"{server}/odata/"


@pytest.fixture(scope="module")
def basic(admin_key: ApiKey) -> tuple[str, str]:
    return (admin_key.key_id, admin_key.secret)


def get(root: str, path: str, auth: Any, **params: Any) -> requests.Response:
    return requests.get(root + path, params=params, auth=auth, timeout=30)


def test_metadata_is_valid_csdl(root: str, basic: tuple[str, str]) -> None:
    r = get(root, "$metadata", basic)
    assert r.status_code == 200, r.text
    assert r.headers["OData-Version"] == "4.0"
    assert r.headers["content-type"].startswith("application/xml")
    schema = xmlschema.XMLSchema11(str(XSD))  # OASIS edmx.xsd + edm.xsd (XSD 1.1), vendored
    schema.validate(r.content)
    text = r.text
    for name in SETS:
        assert f'EntitySet Name="{name}"' in text
    for edm in ("Edm.String", "Edm.Double", "Edm.Int64", "Edm.DateTimeOffset", "Edm.Guid"):
        assert edm in text


def test_service_document(root: str, basic: tuple[str, str]) -> None:
    body = get(root, "", basic).json()
    assert body["@odata.context"] == root + "$metadata"
    assert [s["name"] for s in body["value"]] == list(SETS)


def test_client_pages_through_every_entity_set(root: str, basic: tuple[str, str]) -> None:
    expected = {
        "Experiments": 2,
        "Runs": 35,
        "RunParams": 40,
        "RunTags": 30,
        "RunMetrics": len(POINT_RUNS) + 1 + len(BIZ_LATEST),
        "MetricPoints": len(POINT_RUNS) * STEPS,
        "Findings": 4,
        "BusinessMetrics": BIZ_ROWS,
    }
    # Page by page: the client follows @odata.nextLink (server-driven paging, 7 rows a page).
    session = requests.Session()
    session.headers["Prefer"] = "odata.maxpagesize=7"
    paged = ODataService(
        root, reflect_entities=True, auth=requests.auth.HTTPBasicAuth(*basic), session=session
    )
    for name, count in expected.items():
        entity = paged.entities[name]
        rows = paged.query(entity).all()
        assert len(rows) == count, name
    # $filter, $orderby through the client's own expression builders
    run = paged.entities["Runs"]
    finished = paged.query(run).filter(run.Status == "FINISHED").filter(run.ExperimentId == ALPHA)
    names = [r.Name for r in finished.order_by(run.StartTime.desc()).all()]
    assert names == [f"a{i}" for i in range(29, -1, -1) if i % 2]
    starts = paged.query(run).filter(run.Name.startswith("b")).all()
    assert sorted(r.RunId for r in starts) == BETA_RUNS
    first = paged.query(run).order_by(run.RunId.asc()).first()
    assert first.RunId == ALPHA_RUNS[0]
    points = paged.entities["MetricPoints"]
    late = paged.query(points).filter(points.RunId == BETA_RUNS[0]).filter("Step ge 95").all()
    assert sorted(p.Step for p in late) == [95, 96, 97, 98, 99]
    biz = paged.entities["BusinessMetrics"]
    production = paged.query(biz).filter(biz.MetricKey == REVENUE).filter(biz.Stage == "Production")
    got = [(b.ModelName, b.Version, b.Value) for b in production.order_by(biz.Value.desc()).all()]
    assert got == [("churn", v, v / 100) for v in (8, 6, 4, 2)] + [("vision", 1, 0.01)]
    # The other entity sets through the client's filters too, each answer recomputed from the seed.
    experiment = paged.entities["Experiments"]
    early = paged.query(experiment).filter(
        experiment.CreationTime < datetime(1970, 1, 1, 0, 0, 1, 500_000, UTC)
    )
    assert [e.ExperimentId for e in early.all()] == [ALPHA]  # created at 1,000 ms; beta at 2,000 ms
    named = experiment.Name.startswith("beta") & (experiment.LifecycleStage == "active")
    assert [(e.ExperimentId, e.Name) for e in paged.query(experiment).filter(named).all()] == [
        (BETA, "beta-vision")
    ]
    param = paged.entities["RunParams"]
    lr = paged.query(param).filter((param.Key == "lr") & (param.Value == "2")).all()  # lr = i % 3
    assert sorted(p.RunId for p in lr) == [r for i, r in enumerate(ALPHA_RUNS + BETA_RUNS) if i % 3 == 2]
    quoted = paged.query(param).filter(param.Value == 'adam, "beta"').all()  # quotes and a comma
    assert sorted(p.RunId for p in quoted) == BETA_RUNS
    tag = paged.entities["RunTags"]
    fast = paged.query(tag).filter((tag.Key == "mode") & tag.Value.endswith("ast")).all()
    assert sorted(t.RunId for t in fast) == [r for i, r in enumerate(ALPHA_RUNS) if i % 2]
    metric = paged.entities["RunMetrics"]
    # python-odata 0.8.1 reflects Edm.Double as a string property (its type table lacks Edm.Double):
    # numeric comparisons on Double go in as $filter text, as a user of that client writes them.
    low = paged.query(metric).filter(metric.Key == "loss").filter("Value lt 0.055")
    expected_low = sorted(
        (r for r in POINT_RUNS if loss_at(r, STEPS - 1) < 0.055), key=lambda r: loss_at(r, STEPS - 1)
    )
    assert 0 < len(expected_low) < len(POINT_RUNS)  # the filter keeps some runs, not all
    assert [m.RunId for m in low.order_by(metric.Value.asc()).all()] == expected_low
    # Findings (seed): spikes on alpha00..02 with severity 0.5 + i / 10 at 1,700,000,000 + i s;
    # a lint finding on beta00 at + 5 s, without severity.
    finding = paged.entities["Findings"]
    severe = paged.query(finding).filter(finding.Kind == "spike").filter("Severity gt 0.55")
    newest_first = severe.order_by(finding.OccurredAt.desc()).all()
    assert [f.RunId for f in newest_first] == [ALPHA_RUNS[2], ALPHA_RUNS[1]]
    unrated = paged.query(finding).filter(finding.Severity.is_null()).all()
    assert [(f.RunId, f.Kind) for f in unrated] == [(BETA_RUNS[0], "lint.metric_myopia")]
    since = paged.query(finding).filter(finding.OccurredAt >= datetime.fromtimestamp(1_700_000_001, UTC))
    assert sorted(f.RunId for f in since.all()) == [ALPHA_RUNS[1], ALPHA_RUNS[2], BETA_RUNS[0]]


def _all(root: str, path: str, auth: Any, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow nextLinks by hand; the rows and the number of pages."""
    r = get(root, path, auth, **params)
    assert r.status_code == 200, r.text
    body = r.json()
    rows, pages = list(body["value"]), 1
    while "@odata.nextLink" in body:
        body = requests.get(body["@odata.nextLink"], auth=auth, timeout=30).json()
        rows += body["value"]
        pages += 1
    return rows, pages


def test_query_options(root: str, basic: tuple[str, str]) -> None:
    body = get(root, "Runs", basic, **{"$count": "true", "$top": "3", "$select": "RunId,Status"}).json()
    assert body["@odata.count"] == 35
    assert body["@odata.context"].endswith("$metadata#Runs(RunId,Status)")
    assert [set(v) for v in body["value"]] == [{"RunId", "Status"}] * 3
    assert "@odata.nextLink" not in body  # $top reached
    # $top larger than a page: nextLinks carry the remainder
    rows, pages = _all(root, "Runs", basic, **{"$top": "10", "$orderby": "StartTime desc", "$skip": "2"})
    assert pages == 1 and len(rows) == 10
    big = requests.get(
        root + "RunParams",
        params={"$top": "25", "$filter": "Key eq 'lr' and (Value eq '0' or Value eq '2')"},
        headers={"Prefer": "odata.maxpagesize=10"},
        auth=basic,
        timeout=30,
    ).json()
    assert len(big["value"]) == 10 and "%24top=15" in big["@odata.nextLink"]
    # not, ne, contains, dates, nulls, numbers
    rows, _ = _all(root, "Runs", basic, **{"$filter": "EndTime ne null and not contains(Name, 'a')"})
    assert sorted(r["RunId"] for r in rows) == BETA_RUNS
    assert rows[0]["EndTime"].endswith("Z") and rows[0]["EndTime"].startswith("1970-01-01T00:00:30.")
    rows, _ = _all(
        root,
        "Runs",
        basic,
        **{"$filter": "StartTime ge 1970-01-01T00:00:10.005Z and StartTime lt 1970-01-01T00:00:10.0075Z"},
    )
    assert sorted(r["Name"] for r in rows) == ["a5", "a6", "a7"]
    rows, _ = _all(
        root, "RunMetrics", basic, **{"$filter": "Value gt 0.005 and Key eq 'loss'", "$orderby": "Value desc"}
    )
    values = [r["Value"] for r in rows]
    assert values == sorted(values, reverse=True) and len(values) == len(POINT_RUNS)
    nan = get(root, "RunMetrics", basic, **{"$filter": "Key eq 'acc'"}).json()["value"]
    assert nan[0]["Value"] == "NaN"
    findings = get(
        root, "Findings", basic, **{"$filter": "Severity ge 0.6", "$orderby": "OccurredAt desc"}
    ).json()
    assert [f["Severity"] for f in findings["value"]] == [0.7, 0.6]
    guid = findings["value"][0]["EventId"]
    one = get(root, "Findings", basic, **{"$filter": f"EventId eq {guid}"}).json()["value"]
    assert len(one) == 1
    assert get(root, "Runs/$count", basic, **{"$filter": "ExperimentId eq '" + BETA + "'"}).text == "5"


def _report_row(row: dict[str, Any]) -> dict[str, Any]:
    """A BusinessMetrics entity in the REST report's shape (level=version)."""
    moment = datetime.fromisoformat(row["Timestamp"])
    return {
        "model_name": row["ModelName"],
        "version": row["Version"],
        "stage": row["Stage"],
        "run_id": row["RunId"],
        "experiment_id": row["ExperimentId"],
        "metric": row["MetricKey"],
        "category": row["Category"],
        "unit": row["Unit"],
        "currency": row["Currency"],
        "owner": row["Owner"],
        "direction": row["Direction"],
        "value": row["Value"],
        "step": row["Step"],
        "timestamp": (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1),
    }


def test_business_metrics_are_the_report_rows(
    server: str, root: str, basic: tuple[str, str], admin_key: ApiKey, identities: dict[str, Identity]
) -> None:
    report = requests.get(
        server + "/api/v1/reports/business",
        headers={"Authorization": f"Bearer {admin_key.token}"},
        timeout=30,
    ).json()
    assert len(report["rows"]) == BIZ_ROWS
    # Paged in threes through keyset tokens, in the report's order (model, version, metric).
    rows: list[dict[str, Any]] = []
    url: str | None = root + "BusinessMetrics"
    while url:
        body = requests.get(url, headers={"Prefer": "odata.maxpagesize=3"}, auth=basic, timeout=30).json()
        rows += body["value"]
        url = body.get("@odata.nextLink")
    assert [_report_row(r) for r in rows] == report["rows"]
    inf = next(r for r in rows if r["Version"] == 8 and r["MetricKey"] == SAVINGS)
    assert inf["Value"] is None  # not finite: null, as in the report
    # And the report's export table (Parquet) holds the same rows.
    exported = requests.get(
        server + "/api/v1/exports/business-metrics",
        params={"format": "parquet"},
        headers={"Authorization": f"Bearer {admin_key.token}"},
        timeout=30,
    )
    assert as_report_rows(pq.read_table(io.BytesIO(exported.content))) == report["rows"]
    # The options reach Postgres: numbers, nulls, strings, functions, $orderby, $count.
    rows, _ = _all(
        root,
        "BusinessMetrics",
        basic,
        **{"$filter": "Currency eq 'USD' and Value gt 300", "$orderby": "Value desc", "$select": "Version"},
    )
    assert rows == [{"Version": 6}, {"Version": 4}]
    rows, _ = _all(root, "BusinessMetrics", basic, **{"$filter": "Value eq null"})
    assert [(r["Version"], r["MetricKey"]) for r in rows] == [(8, SAVINGS)]
    rows, _ = _all(
        root,
        "BusinessMetrics",
        basic,
        **{
            "$filter": "startswith(ModelName, 'ch') and not (Stage eq 'Staging' or contains(MetricKey, 'cost'))"
        },
    )
    assert sorted(r["Version"] for r in rows) == [2, 4, 6, 8]
    body = get(
        root, "BusinessMetrics", basic, **{"$filter": "Version ge 7", "$count": "true", "$top": "1"}
    ).json()
    assert body["@odata.count"] == 3 and len(body["value"]) == 1
    assert get(root, "BusinessMetrics/$count", basic, **{"$filter": f"ExperimentId eq '{BETA}'"}).text == "1"
    # A grant narrowed to BETA: the same narrowing as the report's.
    narrowed = identities["narrowed"]
    theirs = requests.get(server + "/api/v1/reports/business", headers=narrowed.headers, timeout=30).json()[
        "rows"
    ]
    mine, _ = _all(root, "BusinessMetrics", (narrowed.key.key_id, narrowed.key.secret))
    assert [_report_row(r) for r in mine] == theirs
    assert [(r["ModelName"], r["Version"]) for r in mine] == [("vision", 1)]


def test_paging_with_orderby_on_nullable_and_ties(root: str, basic: tuple[str, str]) -> None:
    expected = sorted(
        get(root, "Runs", basic).json()["value"],
        key=lambda r: (r["EndTime"] is None, r["EndTime"] or "", r["RunId"]),
    )
    rows, pages = [], 0
    r = requests.get(
        root + "Runs",
        params={"$orderby": "EndTime"},
        headers={"Prefer": "odata.maxpagesize=4"},
        auth=basic,
        timeout=30,
    )
    body = r.json()
    while True:
        rows += body["value"]
        pages += 1
        if "@odata.nextLink" not in body:
            break
        body = requests.get(
            body["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=4"}, auth=basic, timeout=30
        ).json()
    assert pages == 9
    assert [r["RunId"] for r in rows] == [r["RunId"] for r in expected]
    # descending on a nullable column: nulls first
    desc, _ = _all(root, "Runs", basic, **{"$orderby": "EndTime desc,RunId desc"})
    assert desc[0]["EndTime"] is None and desc[-1]["RunId"] == BETA_RUNS[0]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"$expand": "Params"}, "$expand"),
        ({"$apply": "groupby((Status))"}, "$apply"),
        ({"$filter": "Nope eq 1"}, "no property"),
        ({"$filter": "Name eq 1"}, "Edm.String"),
        ({"$filter": "StartTime gt 'x'"}, "DateTimeOffset"),
        ({"$filter": "Name eq 'x' or"}, "ended"),
        ({"$filter": "length(Name) gt 1"}, "length"),
        ({"$filter": "Step add 1 gt 2"}, "add"),
        ({"$orderby": "Name sideways"}, "asc or desc"),
        ({"$select": "Name,Nope"}, "Nope"),
        ({"$top": "-1"}, "$top"),
        ({"$skiptoken": "garbage"}, "skiptoken"),
        ({"$format": "xml"}, "$format"),
        ({"$count": "maybe"}, "$count"),
    ],
)
def test_bad_options_are_400(
    root: str, basic: tuple[str, str], params: dict[str, str], fragment: str
) -> None:
    r = get(root, "Runs", basic, **params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"]["code"] == "INVALID_PARAMETER_VALUE"
    assert fragment.lower() in body["error"]["message"].lower()


def test_skiptoken_of_another_query_is_refused(root: str, basic: tuple[str, str]) -> None:
    r = requests.get(root + "Runs", headers={"Prefer": "odata.maxpagesize=2"}, auth=basic, timeout=30)
    token = r.json()["@odata.nextLink"].split("%24skiptoken=")[1]
    other = get(root, "Runs", basic, **{"$skiptoken": unquote(token), "$filter": "Name eq 'a1'"})
    assert other.status_code == 400


@pytest.fixture(scope="module")
def identities(dsn: str, server: str) -> dict[str, Identity]:
    async def make() -> dict[str, Identity]:
        return {
            "intruder": await provision(dsn, OTHER, Role.ENGINEER),
            "narrowed": await provision(dsn, T, Role.VIEWER, experiment_id=BETA),
            "norole": await provision(dsn, T, None),
        }

    made = asyncio.run(make())
    for _ in range(100):
        probe = httpx.get(server + "/api/v1/whoami", headers=made["norole"].headers)
        if probe.status_code == 200:
            break
        time.sleep(0.05)
    return made


def _urls() -> list[str]:
    return ["", "$metadata", *SETS, *(f"{s}/$count" for s in SETS)]


def test_every_odata_route_needs_a_key(root: str) -> None:
    for path in _urls():
        r = requests.get(root + path, timeout=30)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        wrong = requests.get(root + path, auth=("rlk_nope", "secret"), timeout=30)
        assert wrong.status_code == 401, (path, wrong.status_code)


def test_another_tenant_sees_nothing(server: str, root: str, identities: dict[str, Identity]) -> None:
    intruder = identities["intruder"]
    auth = (intruder.key.key_id, intruder.key.secret)
    for name in SETS:
        r = get(root, name, auth, **{"$filter": f"ExperimentId eq '{ALPHA}'", "$count": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["value"] == [] and r.json()["@odata.count"] == 0
        everything, _ = _all(root, name, auth)
        assert not any(ALPHA in str(row) or BETA in str(row) for row in everything)
        assert {row["ExperimentId"] for row in everything if "ExperimentId" in row} <= {SECRET}
    # The business-metrics export too: the other tenant's own planted version, nothing of T's.
    exported = requests.get(
        server + "/api/v1/exports/business-metrics",
        params={"format": "ndjson"},
        headers=intruder.headers,
        timeout=30,
    )
    rows = [orjson.loads(line) for line in exported.text.splitlines()]
    assert [(r["model_name"], r["run_id"], r["owner"]) for r in rows] == [("churn", "theirs", LEAK)]


def test_narrowed_grant_and_no_role(root: str, identities: dict[str, Identity]) -> None:
    narrowed = identities["narrowed"]
    auth = (narrowed.key.key_id, narrowed.key.secret)
    runs, _ = _all(root, "Runs", auth)
    assert sorted(r["RunId"] for r in runs) == BETA_RUNS
    points, _ = _all(root, "MetricPoints", auth)
    assert {p["RunId"] for p in points} == {BETA_RUNS[0]}
    assert get(root, "Findings/$count", auth).text == "1"
    norole = identities["norole"]
    r = get(root, "Runs", (norole.key.key_id, norole.key.secret))
    assert r.status_code == 403


def test_odata_routes_are_in_the_openapi_schema_with_their_media_types(
    server: str, basic: tuple[str, str]
) -> None:
    """Declared (so that schemathesis fuzzes them, tests/fuzz/) as what they answer: JSON pages with
    OData's system query options, CSDL XML, plain-text counts."""
    paths = requests.get(server + "/openapi.json", timeout=30).json()["paths"]
    assert list(paths["/odata/$metadata"]["get"]["responses"]["200"]["content"]) == ["application/xml"]
    for entity_set in SETS:
        collection = paths[f"/odata/{entity_set}"]["get"]
        assert list(collection["responses"]["200"]["content"]) == ["application/json"]
        options = {p["name"] for p in collection["parameters"]}
        assert {"$filter", "$select", "$orderby", "$top", "$skip", "$count", "$skiptoken"} <= options
        count = paths[f"/odata/{entity_set}/$count"]["get"]
        assert list(count["responses"]["200"]["content"]) == ["text/plain"]
        assert {"401", "403"} <= set(count["responses"])
