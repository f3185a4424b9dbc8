"""Bad events per second through the pipeline (`python -m bench.dead_letters`).

On the real embedded stack (`runledger up`'s Supervisor: broker, PostgreSQL, one services
process with API + projector + analysis): the hostile-input generator of the test suite
(tests/support/hostile.py, every category: malformed, mistyped, huge, deep, forged, skewed,
unstorable ...) makes N bad events; they are produced to the events topic as fast as one
kafka-python producer goes, and the clock stops when PostgreSQL counts all N dead letters
(the projector counts them in the transaction of its checkpoint, after the letters are
acknowledged by the broker). Repeated; prints a JSON summary (copied into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import asyncpg
from kafka import KafkaProducer

from bench.stack import embedded_stack
from runledger.auth.keys import parse_key
from runledger.auth.model import Role
from services.ingest.dead_letters import MAX_LETTER_BYTES
from tests.support.auth import Identity, provision
from tests.support.hostile import NO_LETTER, HostileEvents, Signers


async def _counted(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(count), 0) FROM dead_letters_count"))
    finally:
        await conn.close()


def _round(bootstrap: str, topic: str, dsn: str, generator: HostileEvents, events: int) -> dict[str, Any]:
    hostile = [m for m in generator.hostile(events) if m.expect != NO_LETTER]
    before = asyncio.run(_counted(dsn))
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=MAX_LETTER_BYTES,
    )
    started = time.perf_counter()
    for m in hostile:
        producer.send(topic, key=m.key, value=m.value)
    producer.flush()
    produced = time.perf_counter() - started
    producer.close()
    while asyncio.run(_counted(dsn)) < before + len(hostile):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return {
        "bad_events": len(hostile),
        "megabytes": round(sum(len(m.value) for m in hostile) / 1e6, 1),
        "produced_s": round(produced, 2),
        "all_dead_lettered_s": round(elapsed, 2),
        "bad_events_per_s": round(len(hostile) / elapsed),
        "classes": dict(Counter(m.expect for m in hostile).most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="bad events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with embedded_stack() as stack:
        settings = stack.settings
        dsn = stack.postgres_dsn
        admin = Identity(settings.default_tenant, "bootstrap", parse_key(stack.api_key))
        viewer = asyncio.run(provision(dsn, settings.default_tenant, Role.VIEWER, name="bench-viewer"))
        stranger = asyncio.run(provision(dsn, "bench-stranger"))
        generator = HostileEvents(args.seed, Signers(admin, viewer, stranger), "0")
        generator.good_runs(count=8, batches=1, steps_per_batch=10)  # targets for the bad events
        rounds = [
            _round(stack.kafka_bootstrap, settings.events_topic, dsn, generator, args.events)
            for _ in range(args.rounds)
        ]
    print(json.dumps({"events_per_round": args.events, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
