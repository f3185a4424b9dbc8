"""How soon a finding is visible through the API after its offending point is acknowledged.

`python -m bench.analysis_latency [--trials 20] [--background-points-per-s 50000]`

On the real embedded stack (`runledger up`'s Supervisor: tansu, PostgreSQL, one services
process with API, projector and analysis service), per trial: a fresh run logs 300 clean
points of a decaying loss (one signed event straight to Kafka), then a batch whose first
point is a spike. Delay = from Kafka's acknowledgement of that batch to the first
GET /api/v1/anomalies?run_id=... (polled every 20 ms) that lists the spike. Optionally a
background producer keeps the pipeline busy with other runs' points meanwhile.

Also reported: the CPU seconds of the services process over the bench (API, projector
and, in its child process, the analysis service are not told apart here).
Output: a Markdown table to stdout and bench/out/analysis_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from kafka import KafkaProducer

from bench.stack import embedded_stack
from runledger.auth.keys import parse_key
from runledger.auth.signing import signed_bytes
from runledger.events.codec import envelope_dict, experiment_id_for, metric_columns, producer
from runledger.events.models import EventType

_PRODUCER = producer("bench")
TENANT = "default"


def _metrics_event(token: str, experiment_id: str, run_id: str, first: int, values: np.ndarray) -> bytes:
    key = parse_key(token)
    steps = np.arange(first, first + len(values), dtype=np.int64)
    env = envelope_dict(
        tenant_id=TENANT,
        type=EventType.METRICS_LOGGED,
        payload=metric_columns(
            ["train/loss"], np.zeros(len(values), dtype=np.int32), values, steps, 1_700_000_000_000 + steps
        ),
        producer=_PRODUCER,
        run_id=run_id,
        experiment_id=experiment_id,
    )
    return signed_bytes(env, key.key_id, key.signing_key)


def _clean(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.arange(n)
    return 2.0 * np.exp(-x / 80) + 0.3 + rng.normal(0, 0.01, n)


def _background(stop: threading.Event, kafka: KafkaProducer, topic: str, token: str, rate: int) -> None:
    """Other runs' clean points at about `rate` points/s (batches of 1,000 on 100 runs)."""
    experiment_id = experiment_id_for(TENANT, "bench-background")
    runs = [f"bg-{uuid.uuid4().hex[:16]}" for _ in range(100)]
    step = 0
    while not stop.is_set():
        started = time.monotonic()
        for run in runs[: max(1, rate // 1000)]:
            values = _clean(1000, step)[::-1] * 0 + 0.5 + np.random.default_rng(step).normal(0, 0.01, 1000)
            kafka.send(topic, key=run.encode(), value=_metrics_event(token, experiment_id, run, step, values))
        step += 1000
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def run(trials: int, background_rate: int) -> dict[str, Any]:
    with embedded_stack() as stack:
        token = stack.api_key
        topic = stack.settings.events_topic
        kafka = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=1)
        services = psutil.Process(stack._services.proc.pid) if stack._services.proc else None
        cpu_before = services.cpu_times() if services else None
        stop = threading.Event()
        bg = None
        if background_rate:
            bg = threading.Thread(
                target=_background, args=(stop, kafka, topic, token, background_rate), daemon=True
            )
            bg.start()
        experiment_id = experiment_id_for(TENANT, "bench-latency")
        delays: list[float] = []
        with httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as api:
            for trial in range(trials):
                run_id = f"lat-{uuid.uuid4().hex[:16]}"
                clean = _clean(300, trial)
                kafka.send(
                    topic, key=run_id.encode(), value=_metrics_event(token, experiment_id, run_id, 0, clean)
                )
                kafka.flush()
                time.sleep(1.0)  # the clean part analysed: only the spike is in flight below
                spike = _clean(310, trial)[300:]
                spike[0] += 3.0
                kafka.send(
                    topic, key=run_id.encode(), value=_metrics_event(token, experiment_id, run_id, 300, spike)
                ).get(timeout=30)
                acked = time.monotonic()
                while True:
                    found = api.get("/api/v1/anomalies", params={"run_id": run_id, "kind": "spike"}).json()
                    if found["anomalies"]:
                        delays.append(time.monotonic() - acked)
                        break
                    if time.monotonic() - acked > 30:
                        delays.append(float("inf"))
                        break
                    time.sleep(0.02)
        stop.set()
        if bg is not None:
            bg.join(5)
        cpu_after = services.cpu_times() if services else None
        kafka.close(5)
    finite = sorted(d for d in delays if d != float("inf"))
    result = {
        "trials": trials,
        "background_points_per_s": background_rate,
        "missed": len(delays) - len(finite),
        "delay_p50_s": statistics.median(finite) if finite else None,
        "delay_p95_s": finite[int(0.95 * (len(finite) - 1))] if finite else None,
        "delay_max_s": finite[-1] if finite else None,
        "services_cpu_s": (
            (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            if cpu_before and cpu_after
            else None
        ),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--background-points-per-s", type=int, default=0)
    args = parser.parse_args()
    result = run(args.trials, args.background_points_per_s)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "analysis_latency.json").write_text(json.dumps(result, indent=2))
    print("| trials | background points/s | missed | p50 s | p95 s | max s |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {result['trials']} | {result['background_points_per_s']} | {result['missed']} |"
        f" {result['delay_p50_s']:.3f} | {result['delay_p95_s']:.3f} | {result['delay_max_s']:.3f} |"
    )


if __name__ == "__main__":
    main()
