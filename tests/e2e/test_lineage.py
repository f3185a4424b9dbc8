"""Lineage end to end: the SDK logs datasets, a model and a derived run; the API serves the graph."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import runledger_sdk as rl
from runledger_sdk.lineage import compute_digest
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.integration


def _wait_for_graph(
    client: httpx.Client, url: str, params: dict[str, Any], nodes: int, edges: int
) -> dict[str, Any]:
    """Poll until the projector has applied everything (or fail with the last answer)."""
    deadline = time.monotonic() + 60
    body: Any = None
    while time.monotonic() < deadline:
        r = client.get(url, params=params)
        if r.status_code == 200:
            body = r.json()
            details_in = all(n["label"] for n in body["nodes"]) and all(
                n["details"].get("status") == "FINISHED" for n in body["nodes"] if n["kind"] == "run"
            )
            if len(body["nodes"]) == nodes and len(body["edges"]) == edges and details_in:
                return dict(body)
        elif r.status_code != 404:
            r.raise_for_status()
        time.sleep(0.1)
    raise AssertionError(f"lineage not projected in time: {body}")


def test_lineage_of_a_fine_tuned_run(stack: Stack, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "part-0.csv").write_bytes(b"x,y\n1,2\n")
    (extra / "part-1.csv").write_bytes(b"x,y\n3,4\n")
    rl.init(
        transport="kafka",
        kafka_bootstrap=stack.bootstrap,
        events_topic=stack.events_topic,
        spool_dir=tmp_path / "spool",
        system_metrics_interval_s=0,
    )
    try:
        with rl.start_run(experiment=f"e2e-lineage-{suffix}", name="pretrain") as a:
            d1 = a.log_input(f"corpus-{suffix}", version="v1", source="s3://data/corpus")
            model = a.log_model(f"net-{suffix}", version=1, source="s3://models/net/1")
        with rl.start_run(experiment=f"e2e-lineage-{suffix}", name="finetune") as b:
            b.derived_from(a, relation="fine_tuned_from")
            d2 = b.log_input(f"extra-{suffix}", source=extra)
            d3 = b.log_output(f"preds-{suffix}", version="v1", source="s3://data/preds")
        assert rl.flush(30)
    finally:
        rl.shutdown()

    expected_nodes = {
        ("run", b.run_id): 0,
        ("run", a.run_id): 1,
        ("dataset", d2.id): 1,
        ("dataset", d3.id): 1,
        ("dataset", d1.id): 2,
        ("model", model): 2,
    }
    expected_edges = {
        ("run", a.run_id, "run", b.run_id, "fine_tuned_from"),
        ("dataset", d2.id, "run", b.run_id, "input"),
        ("run", b.run_id, "dataset", d3.id, "output"),
        ("dataset", d1.id, "run", a.run_id, "input"),
        ("run", a.run_id, "model", model, "produced"),
    }
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        url = f"/api/v1/lineage/run/{b.run_id}"
        body = _wait_for_graph(client, url, {"depth": 2}, len(expected_nodes), len(expected_edges))
        assert {(n["kind"], n["id"]): n["depth"] for n in body["nodes"]} == expected_nodes
        edges = {
            (e["source_kind"], e["source_id"], e["target_kind"], e["target_id"], e["relation"])
            for e in body["edges"]
        }
        assert edges == expected_edges
        nodes = {(n["kind"], n["id"]): n for n in body["nodes"]}
        assert nodes[("run", a.run_id)]["label"] == "pretrain"
        assert nodes[("run", b.run_id)]["details"]["status"] == "FINISHED"
        assert nodes[("model", model)]["details"]["run_id"] == a.run_id
        assert nodes[("model", model)]["details"]["source"] == "s3://models/net/1"
        assert nodes[("dataset", d1.id)]["details"]["source"] == "s3://data/corpus"
        assert nodes[("dataset", d2.id)]["details"]["digest"] == compute_digest(extra)
        assert nodes[("dataset", d2.id)]["details"]["source_type"] == "local"

        # The model's own lineage, upstream: the run that produced it and that run's input.
        up = client.get(f"/api/v1/lineage/model/{model}", params={"direction": "upstream"}).json()
        assert {(n["kind"], n["id"]) for n in up["nodes"]} == {
            ("model", model),
            ("run", a.run_id),
            ("dataset", d1.id),
        }
        # Depth 1 from the first dataset, downstream: only the run that read it.
        down = client.get(f"/api/v1/lineage/dataset/{d1.id}", params={"depth": 1, "direction": "downstream"})
        assert {(n["kind"], n["id"]) for n in down.json()["nodes"]} == {("dataset", d1.id), ("run", a.run_id)}
