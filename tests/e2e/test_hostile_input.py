"""Hostile input on the events topic: ≥10,000 generated bad events of every category,
interleaved with the good events of several runs, pushed straight onto the topic.

Every bad event is dead-lettered with the reason its category calls for, keeping its
exact bytes; replays of good events are applied once; every good event arrives with its
exact values; the projector goes on consuming afterwards. The input comes from
RUNLEDGER_TEST_SEED (tests/support/hostile.py), the volume from RUNLEDGER_HOSTILE_EVENTS.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from runledger.auth.model import Role
from runledger.events.models import EventType
from services.ingest.dead_letters import MAX_LETTER_BYTES, reason_class
from services.ingest.dlq_tools import DeadLetter, read_letters
from tests.e2e.conftest import Stack
from tests.support.auth import provision
from tests.support.hostile import (
    CATEGORIES,
    NO_LETTER,
    GoodRun,
    HostileEvents,
    Message,
    Signers,
    hostile_seed,
)

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

HOSTILE_EVENTS = int(os.environ.get("RUNLEDGER_HOSTILE_EVENTS", "10000"))
DEADLINE_S = float(os.environ.get("RUNLEDGER_HOSTILE_DEADLINE_S", "90"))


def _produce(stack: Stack, messages: list[Message]) -> list[tuple[int, int]]:
    """Send in order; the (partition, offset) each message got."""
    producer = KafkaProducer(
        bootstrap_servers=stack.bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=MAX_LETTER_BYTES,
        max_in_flight_requests_per_connection=1,
    )
    try:
        futures = [producer.send(stack.events_topic, key=m.key, value=m.value) for m in messages]
        producer.flush()
        return [(md.partition, md.offset) for md in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close()


def _ours(stack: Stack, letters: list[DeadLetter]) -> dict[tuple[int, int], list[DeadLetter]]:
    """Dead letters of the events topic, by the (partition, offset) of the rejected message."""
    out: dict[tuple[int, int], list[DeadLetter]] = {}
    for letter in letters:
        source = str(letter.record.get("source", ""))
        topic, _, partition = source.rpartition(".")
        if topic.endswith(stack.events_topic):
            out.setdefault((int(partition), int(letter.record["offset"])), []).append(letter)
    return out


def _run_complete(client: httpx.Client, run: GoodRun) -> bool:
    answer = client.get(f"/api/v1/runs/{run.run_id}")
    if answer.status_code != 200:
        return False
    body = answer.json()
    last = run.steps[-1]
    return (
        body["info"]["status"] == "FINISHED"
        and all(body["metrics"].get(key, {}).get("step") == last for key in run.keys)
        and all(body["tags"].get(k) == v for k, v in run.tags.items())
    )


def _state(client: httpx.Client, run: GoodRun) -> dict[str, Any]:
    """What the API shows of a run, against what it should (for failure messages)."""
    body = client.get(f"/api/v1/runs/{run.run_id}").json()
    return {
        "run_id": run.run_id,
        "status": body.get("info", {}).get("status"),
        "steps": {k: v.get("step") for k, v in body.get("metrics", {}).items()},
        "want_last_step": run.steps[-1],
        "tags": body.get("tags"),
        "want_tags": run.tags,
    }


def _same_values(got: list[Any], want: list[float]) -> bool:
    return len(got) == len(want) and all(
        (isinstance(g, str) and math.isnan(w)) or (g is None and math.isnan(w)) or g == w
        for g, w in zip(got, want, strict=True)
    )


def test_hostile_events_are_dead_lettered_and_good_ones_all_arrive(stack: Stack) -> None:
    seed = hostile_seed()
    suffix = f"{seed}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    viewer = asyncio.run(provision(stack.dsn, "default", Role.VIEWER, name=f"hostile-viewer-{suffix}"))
    stranger = asyncio.run(provision(stack.dsn, f"hostile-{suffix}"[:60]))
    generator = HostileEvents(seed, Signers(stack.admin, viewer, stranger), "0")
    runs = generator.good_runs(count=8, batches=10, steps_per_batch=50)
    hostile = generator.hostile(HOSTILE_EVENTS)
    messages = generator.interleave(hostile)
    expected = Counter(m.expect for m in hostile if m.expect != NO_LETTER)
    assert {m.category for m in hostile} == set(CATEGORIES)
    assert sum(expected.values()) >= HOSTILE_EVENTS  # and the replays on top

    log_start = stack.services.log_path.stat().st_size
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        before = _dead_letter_counts(client)
        started = time.monotonic()
        positions = _produce(stack, messages)
        produced_s = time.monotonic() - started

        # Every good run complete in the projections.
        deadline = started + DEADLINE_S
        pending = list(runs)
        while pending and time.monotonic() < deadline:
            pending = [run for run in pending if not _run_complete(client, run)]
            time.sleep(0.25)
        if os.environ.get("HOSTILE_DEBUG_LOG"):
            import shutil

            shutil.copy(stack.services.log_path, os.environ["HOSTILE_DEBUG_LOG"])
        assert not pending, (
            f"good runs not projected in {DEADLINE_S} s: {[_state(client, r) for r in pending]}\n{_log_problems(stack)}"
        )

        # Every bad message dead-lettered.
        bad_at = {pos: m for pos, m in zip(positions, messages, strict=True) if m.expect != NO_LETTER}
        while True:
            letters = _ours(stack, read_letters(stack.bootstrap, stack.dlq_topic, timeout_s=60))
            if all(pos in letters for pos in bad_at) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        log.warning(
            "hostile input seed %d: %d messages (%d bad) produced in %.1f s, all handled in %.1f s",
            seed,
            len(messages),
            len(bad_at),
            produced_s,
            elapsed,
        )

        missing = [(pos, m.category, m.expect) for pos, m in bad_at.items() if pos not in letters]
        assert not missing, (
            f"{len(missing)} bad events without a dead letter, e.g. {missing[:5]}\n{_log_problems(stack)}"
        )
        wrong = []
        for pos, m in bad_at.items():
            letter = letters[pos][0]
            if reason_class(letter.reason) != m.expect:
                wrong.append((m.category, m.expect, letter.reason[:200]))
            elif letter.original is not None and letter.original != m.value:
                wrong.append((m.category, m.expect, "original bytes not kept"))
            elif letter.original is None and letter.record.get("size") != len(m.value):
                wrong.append((m.category, m.expect, "truncated letter with a wrong size"))
        assert not wrong, f"{len(wrong)} wrong dead letters, e.g. {wrong[:10]}"
        good_positions = {pos for pos, m in zip(positions, messages, strict=True) if m.expect == NO_LETTER}
        assert not good_positions & set(letters), "a good event or a replay was dead-lettered"
        actual = Counter(reason_class(letters[pos][0].reason) for pos in bad_at)
        assert actual == expected
        # Dead letters are counted, per reason class, in Postgres as well.
        after = _dead_letter_counts(client)
        assert {r: after.get(r, 0) - before.get(r, 0) for r in expected} == dict(expected)

        # Exactly the good values, each applied once (the replays were dropped).
        for run in runs:
            body = client.get(f"/api/v1/runs/{run.run_id}").json()
            assert body["params"] == run.params
            assert body["tags"] == {**body["tags"], **run.tags}
            assert not [k for k in body["tags"] if k.startswith("hostile.") or k == "big"], body["tags"]
            assert not [k for k in body["params"] if k.startswith("h") or k == "big"], body["params"]
            for key in run.keys:
                history = client.get(f"/api/v1/runs/{run.run_id}/metrics/{key}/history").json()
                assert history["steps"] == run.steps, key
                assert _same_values(history["values"], run.values[key]), key
            assert "hostile" not in body["metrics"]

        # Still consuming: a good event sent after the flood arrives.
        after_flood = runs[0]
        tag = {"after": f"flood-{suffix}"}
        raw = generator._event(EventType.TAGS_SET, after_flood, {"tags": tag})
        _produce(stack, [Message("good", after_flood.run_id.encode(), raw)])
        until = time.monotonic() + 15
        while time.monotonic() < until:
            if client.get(f"/api/v1/runs/{after_flood.run_id}").json()["tags"].get("after") == tag["after"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the projector stopped consuming after the hostile input")
        assert client.get("/healthz").status_code == 200
    # Nothing failed on the way: no consumer loop restarted, no unexpected exception logged.
    with stack.services.log_path.open("rb") as log_file:
        log_file.seek(log_start)
        ours = log_file.read().decode(errors="replace")
    crashes = [x for x in ours.splitlines() if "Traceback" in x or " ERROR services." in x]
    assert not crashes, "\n".join(crashes[:20]) + "\n" + _log_problems(stack)


def _log_problems(stack: Stack) -> str:
    """The services' log lines about failures (not the dead letters themselves)."""
    lines = stack.services.log_tail(100_000).splitlines()
    return "\n".join(
        [x for x in lines if " dead letters: " not in x and ("ERROR" in x or "Error" in x)][-30:]
    )


def _dead_letter_counts(client: httpx.Client) -> Counter[str]:
    counts: Counter[str] = Counter()
    for row in client.get("/api/v1/admin/dead-letters").json()["dead_letters"]:
        counts[row["reason"]] += row["count"]
    return counts
