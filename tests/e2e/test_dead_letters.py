"""Malformed events go to the dead-letter topic with a reason; good events around them all arrive."""

from __future__ import annotations

import time
import uuid

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.e2e.conftest import Stack
from tests.support.events import metrics_batch, run_started

pytestmark = pytest.mark.integration


def test_bad_events_are_dead_lettered_and_the_pipeline_goes_on(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    run_id = uuid.uuid4().hex
    good_start = run_started(stack.admin, "0", run_id, name=f"dlq-{marker}")
    good_points, _ = metrics_batch(stack.admin, "0", run_id, ["loss"], 0, 100, seed=1)
    bad = [
        f"not json {marker}".encode(),
        orjson.dumps({"marker": marker}),  # no envelope
        orjson.dumps([marker]),
        good_points.replace(b'"run.metrics_logged"', b'"run.teleported"').replace(
            b'"producer"', f'"note":"{marker}","producer"'.encode(), 1
        ),
        good_start.replace(b'"start_time"', f'"name2":"{marker}\\u0000","start_time"'.encode()),
    ]
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    try:
        producer.send(stack.events_topic, key=run_id.encode(), value=good_start)
        for value in bad:
            producer.send(stack.events_topic, key=run_id.encode(), value=value)
        producer.send(stack.events_topic, key=run_id.encode(), value=good_points)
        producer.flush()
    finally:
        producer.close()

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            run = client.get(f"/api/v1/runs/{run_id}")
            if run.status_code == 200 and run.json()["metrics"].get("loss", {}).get("step") == 99:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the good events after the bad ones were not projected")
        history = client.get(f"/api/v1/runs/{run_id}/metrics/loss/history").json()
        assert history["steps"] == list(range(100))

    consumer = KafkaConsumer(
        bootstrap_servers=stack.bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000
    )
    try:
        consumer.assign([TopicPartition(stack.dlq_topic, 0)])
        consumer.seek_to_beginning()
        letters = [orjson.loads(m.value) for m in consumer]
    finally:
        consumer.close()
    ours = [letter for letter in letters if marker in letter["value"]]
    reasons = sorted(letter["reason"].split(":")[0] for letter in ours)
    assert len(ours) == len(bad), letters
    assert reasons == sorted(
        [
            "not valid JSON",
            "bad envelope",
            "event is not a JSON object",
            "bad envelope",
            "NUL character in event",
        ]
    )
    assert all(stack.events_topic in letter["source"] and letter["offset"] >= 0 for letter in ours)

    counted = httpx.get(f"{stack.url}/api/v1/admin/dead-letters", timeout=10, headers=stack.headers).json()[
        "dead_letters"
    ]
    by_reason = {(c["tenant_id"], c["reason"]): c["count"] for c in counted}
    assert by_reason[("", "bad envelope")] >= 2 and by_reason[("", "NUL character in event")] >= 1
