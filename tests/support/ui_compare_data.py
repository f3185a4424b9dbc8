"""Data for the compare view's browser tests, logged through the real SDK (Kafka).

One experiment of `lrs x optimizers x seeds` runs: `val/loss` falls with the learning rate
(so `lr` is the important param), `sgd` adds a little, one configuration (the smallest lr with
sgd) is noisy across seeds (unstable), and every run logs per-subgroup fairness metrics with
`rl.log_fairness_metrics` (attribute `sex`, groups `f` and `m`, the `f` group predicted worse).
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

LRS = (0.1, 0.01, 0.001, 0.0001)
OPTIMIZERS = ("adam", "sgd")
SEEDS = (0, 1)
STEPS = 20
NOISY = (0.0001, "sgd")  # the configuration whose seeds disagree


@dataclass(frozen=True)
class CompareRun:
    """One logged run and the configuration it was logged with."""

    run_id: str
    name: str
    lr: float
    optimizer: str
    seed: int


@dataclass
class CompareLogged:
    experiment_id: str = ""
    runs: list[CompareRun] = field(default_factory=list)

    def pick(self, lr: float, optimizer: str) -> list[CompareRun]:
        """The runs (every seed) of one configuration."""
        return [r for r in self.runs if r.lr == lr and r.optimizer == optimizer]


def final_loss(lr: float, optimizer: str, seed: int) -> float:
    """The planted final val/loss of a configuration and seed."""
    noise = (0.35 if (lr, optimizer) == NOISY else 0.004) * (1 if seed % 2 else -1)
    return 0.2 + 0.25 * LRS.index(lr) + (0.05 if optimizer == "sgd" else 0) + noise


def _log(experiment: str, env: dict[str, str], out: Any) -> None:
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
    logged = CompareLogged()
    i = 0
    for lr in LRS:
        for optimizer in OPTIMIZERS:
            for seed in SEEDS:
                name = f"cmp-{i:02d}-lr{lr:g}-{optimizer}-s{seed}"
                run = rl.start_run(experiment=experiment, name=name)
                logged.experiment_id = run.experiment_id
                run.log_params({"lr": lr, "optimizer": optimizer, "seed": seed})
                end = final_loss(lr, optimizer, seed)
                for step in range(STEPS):
                    loss = end + (1.5 - end) * (1 - step / (STEPS - 1)) ** 2
                    run.log_metrics(
                        {"train/loss": loss * 0.9, "val/loss": loss, "val/acc": 1 - loss / 2}, step=step
                    )
                rng = np.random.default_rng(1000 + i)
                sex = np.array(["f"] * 100 + ["m"] * 100)
                y_true = rng.integers(0, 2, size=200)
                flip = rng.random(200) < np.where(sex == "f", 0.3, 0.1)  # more errors for f
                y_pred = np.where(flip, 1 - y_true, y_true)
                rl.log_fairness_metrics(y_true, y_pred, sex, attribute="sex", step=STEPS - 1, run=run)
                rl.end_run()
                logged.runs.append(CompareRun(run.run_id, name, lr, optimizer, seed))
                i += 1
    rl.flush()
    rl.shutdown()
    out.put(logged)


def log_compare_experiment(
    experiment: str, *, bootstrap: str, api_key: str, tenant: str, spool: Path, events_topic: str
) -> CompareLogged:
    """Log the experiment from a child process through the SDK (the client is process-wide)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    env = {
        "bootstrap": bootstrap,
        "api_key": api_key,
        "tenant": tenant,
        "spool": str(spool),
        "events_topic": events_topic,
    }
    proc = ctx.Process(target=_log, args=(experiment, env, queue))
    proc.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            logged: CompareLogged = queue.get(timeout=0.5)
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the SDK process logging {experiment!r} died") from None
            continue
        proc.join(30)
        return logged
    proc.kill()
    raise TimeoutError(f"logging {experiment!r} took too long")


async def wait_compare_projected(dsn: str, logged: CompareLogged, limit_s: float = 120.0) -> None:
    """Until every run is finished in Postgres with its last val/loss and its fairness metrics."""
    ids = [r.run_id for r in logged.runs]
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            finished = await conn.fetchval(
                "SELECT count(*) FROM runs WHERE run_id = ANY($1::text[]) AND status = 'FINISHED'", ids
            )
            last = await conn.fetchval(
                "SELECT count(*) FROM latest_metrics WHERE run_id = ANY($1::text[]) AND step = $2"
                " AND key IN ('val/loss', 'val/fairness/sex/f/accuracy')",
                ids,
                STEPS - 1,
            )
            if finished >= len(ids) and last >= 2 * len(ids):
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise TimeoutError(f"the compare experiment was not projected within {limit_s:.0f}s")
