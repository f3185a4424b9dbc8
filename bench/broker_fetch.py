"""The embedded broker's CPU for a tailing consumer, by batches stored and fetch wait.

tansu 0.6.0 with `memory://` storage lists every batch object a partition ever stored on each
fetch that finds data, and holds every fetch for `fetch_max_wait_ms` (it reads first, then
sleeps the rest of the wait). So a consumer that tails the log costs the broker CPU that grows
with the log and with how often it fetches. This measures that on one broker, side by side:

    python -m bench.broker_fetch --stored 0 20000 60000 --waits 50 250

For each number of stored batches (single-record batches of `--record-bytes`, spread over the
topic's partitions, written first), and for each fetch wait in turn, a consumer tails the
topic for `--seconds` while a producer adds `--trickle` records a second; the broker's CPU
(user + system, from /proc) is reported in cores, with the records the consumer received.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.embedded.broker import EmbeddedBroker

TOPIC = "bench.fetch"


def _fill(producer: KafkaProducer, partitions: int, count: int, size: int) -> None:
    """`count` batches of one record each: linger 0 and a flush per partition round."""
    payload = b"x" * size
    for i in range(count):
        producer.send(TOPIC, partition=i % partitions, value=payload)
        if i % partitions == partitions - 1:
            producer.flush()
    producer.flush()


def _tail(
    bootstrap: str,
    broker: psutil.Process,
    partitions: int,
    wait_ms: int,
    seconds: float,
    trickle: int,
    size: int,
) -> dict[str, Any]:
    """Broker cores and records received while a consumer tails the topic with `wait_ms`."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = None
    if wait_ms > 0:  # 0: no consumer, the producer's cost alone
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms, enable_auto_commit=False
        )
        assigned = [TopicPartition(TOPIC, p) for p in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_end()
        for tp in assigned:
            consumer.position(tp)
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        payload = b"y" * size
        while not stop.is_set():
            producer.send(TOPIC, partition=sent[0] % partitions, value=payload)
            producer.flush()
            sent[0] += 1
            time.sleep(1 / trickle)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    before, started, received = sum(broker.cpu_times()[:2]), time.monotonic(), 0
    while time.monotonic() - started < seconds:
        if consumer is None:
            time.sleep(0.1)
        else:
            received += sum(len(records) for records in consumer.poll(100).values())
    elapsed = time.monotonic() - started
    cores = (sum(broker.cpu_times()[:2]) - before) / elapsed
    stop.set()
    thread.join()
    if consumer is not None:
        consumer.close()
    producer.close()
    return {
        "fetch_wait_ms": wait_ms,
        "broker_cores": round(cores, 3),
        "records_received": received,
        "records_sent": sent[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stored", type=int, nargs="+", default=[0, 20000, 60000])
    parser.add_argument(
        "--waits", type=int, nargs="+", default=[50, 250], help="fetch_max_wait_ms values (0: no consumer)"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--trickle", type=int, default=50, help="records a second while tailing")
    parser.add_argument("--record-bytes", type=int, default=2500, help="about one compressed fleet step")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        broker = EmbeddedBroker(0, Path(tmp) / "broker.log")
        broker.start()
        try:
            broker.ensure_topics({TOPIC: args.partitions})
            assert broker.pid is not None
            process = psutil.Process(broker.pid)
            filler = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
            stored = 0
            for target in sorted(args.stored):
                _fill(filler, args.partitions, max(0, target - stored), args.record_bytes)
                stored = max(stored, target)
                for wait in args.waits:
                    row = {"stored_batches": stored} | _tail(
                        broker.bootstrap,
                        process,
                        args.partitions,
                        wait,
                        args.seconds,
                        args.trickle,
                        args.record_bytes,
                    )
                    print(json.dumps(row), flush=True)
                    stored += row["records_sent"]  # the trickle is stored too: the next rows count it
            filler.close()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
