"""One chaos writer process: `python -m tests.support.chaos_writer CONFIG_JSON WRITER BOOTSTRAP TOPIC OUT_DIR`.

It starts its runs (params, tags), then logs one chunk of steps of every series every
`chunk_interval_s`, and records in OUT_DIR/writer-N.acks, fsynced, each chunk once the
SDK's delivery reported every event up to it acknowledged by the broker (acks=all) —
exactly what a client was promised. The last lines say the runs ended and how many
events the broker refused for good (must be 0).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import runledger_sdk as rl
from runledger.events.models import RunStatus
from tests.support.chaos_model import EXPERIMENT, TENANT, ChaosConfig, series


class AckLog:
    """Append-only JSON lines, each fsynced before the writer goes on."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record durably."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def run_writer(config: ChaosConfig, writer: int, bootstrap: str, topic: str, out: Path) -> None:
    """Log the writer's runs as a stream and record what was acknowledged."""
    client = rl.init(
        transport="kafka",
        kafka_bootstrap=bootstrap,
        events_topic=topic,
        api_key=os.environ["RUNLEDGER_API_KEY"],
        tenant=TENANT,
        spool_dir=out / f"spool-{writer}",
        send_timeout_s=2.0,
        resend_backoff_max_s=1.0,
        system_metrics_interval_s=0,
        capture_code_state=False,
        capture_environment=False,
        lint_runs=False,
    )
    acks = AckLog(out / f"writer-{writer}.acks")
    keys = config.key_names()
    values = [
        [series(config, writer, r, k) for k in range(config.keys)] for r in range(config.runs_per_writer)
    ]
    runs = []
    for r in range(config.runs_per_writer):
        run = client.start_run(
            experiment=EXPERIMENT,
            name=f"chaos-w{writer}-r{r}",
            tags={"writer": str(writer), "phase": "early"},
            parent_run_id=None,
            run_id=config.run_id(writer, r),
        )
        run.log_params({"seed": config.seed, "writer": writer, "run": r, "lr": 0.001 * (r + 1)})
        runs.append(run)
    pending: deque[tuple[int, int]] = deque()  # (chunk, delivery seq of its last event)

    def record_acked() -> None:
        while pending and client.delivery.wait_for(pending[0][1], 0):
            chunk, seq = pending.popleft()
            acks.write({"chunk": chunk, "seq": seq, "t": time.time()})

    start = time.monotonic()
    for chunk in range(config.chunks):
        first, last = chunk * config.chunk_steps, min((chunk + 1) * config.chunk_steps, config.steps)
        for r, run in enumerate(runs):
            columns = [values[r][k][first:last].tolist() for k in range(config.keys)]
            for i, step in enumerate(range(first, last)):
                run.log_metrics({keys[k]: columns[k][i] for k in range(config.keys)}, step=step)
            if chunk == config.chunks // 2:
                run.set_tag("phase", "late")
        pending.append((chunk, client.batcher.cut_all()))
        record_acked()
        delay = start + (chunk + 1) * config.chunk_interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        record_acked()
    for run in runs:
        run.end_run(RunStatus.FINISHED)
    final = client.batcher.cut_all()
    deadline = time.monotonic() + 600
    while not client.delivery.wait_for(final, 1.0) and time.monotonic() < deadline:
        record_acked()
    record_acked()
    ended = client.delivery.wait_for(final, 0)
    acks.write(
        {
            "ended": ended,
            "acked_events": client.delivery.acked,
            "rejected_events": client.delivery.rejected,
            "spooled_events": client.delivery.spooled,
            "t": time.time(),
        }
    )
    acks.close()
    rl.shutdown(10)


def main() -> None:
    """CLI entry (see the module docstring)."""
    config_json, writer, bootstrap, topic, out = sys.argv[1:6]
    run_writer(ChaosConfig.from_json(config_json), int(writer), bootstrap, topic, Path(out))


if __name__ == "__main__":
    main()
