"""Data for the web UI's browser tests and benchmark, logged through the real SDK (Kafka).

`log_experiment` runs in a child process (the SDK client is process-wide) and returns the
ids it created; `wait_projected` waits until the projector has applied them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import asyncpg

from runledger.config import EVENTS_TOPIC


@dataclass(frozen=True)
class Plan:
    """What to log into one experiment."""

    experiment: str
    runs: int = 20  # top-level runs
    children: int = 0  # nested runs under each of the first `parents` runs
    parents: int = 0
    steps: int = 50  # points of train/loss, val/loss and accuracy per run
    long_series: int = 0  # points of `long/loss` in one extra run (with a spike), 0 = none
    spike_value: float = 1e4


@dataclass
class Logged:
    experiment_id: str = ""
    run_ids: list[str] = field(default_factory=list)
    child_ids: list[str] = field(default_factory=list)
    long_run_id: str = ""


def _log(plan: Plan, env: dict[str, str], out: Any) -> None:
    import numpy as np

    import runledger_sdk as rl

    rl.init(
        transport="kafka",
        kafka_bootstrap=env["bootstrap"],
        api_key=env["api_key"],
        tenant=env["tenant"],
        events_topic=env["events_topic"],
        spool_dir=env["spool"],
        capture_code_state=False,
        capture_environment=False,
        system_metrics_interval_s=0,
        lint_runs=False,
    )
    logged = Logged()
    optimizers = ("adam", "sgd", "adamw")
    for i in range(plan.runs):
        lr = 10 ** (-1 - (i % 4))
        run = rl.start_run(experiment=plan.experiment, name=f"run-{i:05d}")
        logged.experiment_id = run.experiment_id
        run.log_params({"lr": lr, "optimizer": optimizers[i % 3], "seed": i})
        run.set_tags({"data": "v3" if i % 2 else "v2"})
        final = 0.0
        for step in range(plan.steps):
            final = 1.0 / (1 + step * lr * 10) + 0.01 * (i % 7)
            run.log_metrics(
                {"train/loss": final, "val/loss": final * 1.1 + 0.02, "accuracy": 1 - final / 2}, step=step
            )
        if i < plan.parents:
            for c in range(plan.children):
                child = rl.start_run(name=f"run-{i:05d}-fold{c}", parent=run)
                child.log_params({"fold": c})
                child.log_metrics({"val/loss": final + c * 0.01}, step=0)
                rl.end_run()
                logged.child_ids.append(child.run_id)
        rl.end_run()
        logged.run_ids.append(run.run_id)
    if plan.long_series:
        run = rl.start_run(experiment=plan.experiment, name="long-series")
        logged.experiment_id = run.experiment_id
        values = np.cumsum(np.random.default_rng(0).normal(size=plan.long_series)) * 0.01 + 10
        values[plan.long_series // 2] = plan.spike_value  # a spike the downsampled read must keep
        start = int(time.time() * 1000) - plan.long_series
        for step, value in enumerate(values.tolist()):
            run.log_metric("long/loss", value, step=step, timestamp=start + step)
        rl.end_run()
        logged.long_run_id = run.run_id
    rl.flush()
    rl.shutdown()
    out.put(logged)


def log_experiment(
    plan: Plan, *, bootstrap: str, api_key: str, tenant: str, spool: Path, events_topic: str = EVENTS_TOPIC
) -> Logged:
    """Log `plan` from a child process through the SDK; the ids it created."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    env = {
        "bootstrap": bootstrap,
        "api_key": api_key,
        "tenant": tenant,
        "spool": str(spool),
        "events_topic": events_topic,
    }
    proc = ctx.Process(target=_log, args=(plan, env, queue))
    proc.start()
    deadline = time.monotonic() + max(120.0, plan.long_series / 50_000 + plan.runs / 50)
    while time.monotonic() < deadline:
        try:
            logged: Logged = queue.get(timeout=0.5)
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the SDK process logging {plan.experiment!r} died") from None
            continue
        proc.join(30)
        return logged
    proc.kill()
    raise TimeoutError(f"logging {plan.experiment!r} took too long")


async def wait_projected(dsn: str, plan: Plan, logged: Logged, limit_s: float = 300.0) -> None:
    """Until every run, child and the long series' last point are in Postgres."""
    runs = len(logged.run_ids) + len(logged.child_ids) + (1 if logged.long_run_id else 0)
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            have = await conn.fetchval(
                "SELECT count(*) FROM runs WHERE experiment_id = $1 AND status = 'FINISHED'",
                logged.experiment_id,
            )
            points = await conn.fetchval(
                "SELECT count(*) FROM latest_metrics WHERE run_id = ANY($1::text[]) AND step = $2",
                logged.run_ids,
                plan.steps - 1,
            )
            long_done = not logged.long_run_id or await conn.fetchval(
                "SELECT count(*) FROM latest_metrics WHERE run_id = $1 AND step = $2",
                logged.long_run_id,
                plan.long_series - 1,
            )
            if have >= runs and points >= 3 * len(logged.run_ids) and long_done:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise TimeoutError(f"{plan.experiment}: not projected within {limit_s:.0f}s")
