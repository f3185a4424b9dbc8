"""Noisy neighbour: does one tenant flooding the API slow another's writes? (`make bench-tenancy`)

On the real embedded stack, as a platform operator would set it up through the
admin API: the bootstrap key creates tenants `quiet` and `noisy` (each with an admin
key), then the quiet tenant writes small metric batches one after the other and we
record each write's latency (a write returns once projected: read-your-writes).
Three phases side by side in one run, so the ratios hold on a noisy machine:

  baseline   quiet alone
  flood      noisy floods with CONCURRENCY writers, under each events/s quota: polite
             writers wait a 429's Retry-After (as the SDK does), hostile ones retry at once
  unlimited  the same flood with the quota removed

`--quiet-ack` makes the quiet tenant write with `?wait=false` (answered at the broker's ack)
at `--quiet-rate` writes/s, and time each write's visibility too: from its start until a read
given its consistency_token returns.

`--tarpit-max-s 0 2` compares settings of RUNLEDGER_API_TARPIT_MAX_S (how long the API
holds a write retried before its 429's Retry-After; 0 = off): one stack per value,
all running, each phase run on every stack in turn (the order alternating), so the
values see the same machine.

Prints a JSON summary (copied into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stack import embedded_stack
from runledger.embedded.supervisor import Supervisor


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def _create_tenant(admin: httpx.AsyncClient, tenant_id: str) -> str:
    response = await admin.post(
        "/api/v1/tenants", json={"tenant_id": tenant_id, "name": tenant_id, "admin_user": "ops"}
    )
    response.raise_for_status()
    return str(response.json()["api_key"]["api_key"])


async def _new_run(client: httpx.AsyncClient, experiment: str) -> str:
    response = await client.post("/api/v1/runs", json={"experiment_name": experiment})
    response.raise_for_status()
    return str(response.json()["run_id"])


def _points(step: int, count: int) -> dict[str, Any]:
    return {"metrics": [{"key": f"m{i}", "value": float(step + i), "step": step} for i in range(count)]}


@dataclass(frozen=True)
class QuietMode:
    """How the quiet tenant writes: one after the other, each waiting for its projection (the
    default), or with `ack` at `rate` writes/s, answered at the broker's ack."""

    ack: bool = False
    rate: float = 10.0


async def _quiet_writes(
    client: httpx.AsyncClient, run_id: str, seconds: float, mode: QuietMode
) -> tuple[list[float], list[float]]:
    """Latencies (s) of 10-point writes for `seconds`, and (ack mode) of their visibility."""
    latencies: list[float] = []
    visible: list[float] = []
    readers: list[asyncio.Task[None]] = []

    async def read_back(started: float, token: str) -> None:
        response = await client.get(f"/api/v1/runs/{run_id}/metrics", params={"consistency_token": token})
        response.raise_for_status()
        visible.append(time.perf_counter() - started)

    step = 0
    begin = time.perf_counter()
    deadline = begin + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        params = {"wait": "false"} if mode.ack else {}
        response = await client.post(f"/api/v1/runs/{run_id}/metrics", params=params, json=_points(step, 10))
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)
        step += 1
        if mode.ack:
            readers.append(asyncio.create_task(read_back(started, response.json()["consistency_token"])))
            await asyncio.sleep(max(0.0, begin + step / mode.rate - time.perf_counter()))
    await asyncio.gather(*readers)
    return latencies, visible


async def _flood(
    client: httpx.AsyncClient, run_id: str, stop: asyncio.Event, outcomes: Counter[int], polite: bool
) -> None:
    """Write as fast as answers come; `polite` waits a 429's Retry-After as the SDK does."""
    step = 0
    while not stop.is_set():
        response = await client.post(f"/api/v1/runs/{run_id}/metrics", json=_points(step, 200))
        outcomes[response.status_code] += 1
        step += 1
        if polite and response.status_code == 429:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), float(response.headers["retry-after"]))


def _scrape(text: str) -> dict[str, float]:
    """The projector's batch count and seconds, and the API's write-wait seconds, from /metrics."""
    wanted = (
        "runledger_projector_batch_seconds_count",
        "runledger_projector_batch_seconds_sum",
        "runledger_write_wait_seconds_sum",
        "runledger_write_wait_seconds_count",
    )
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


async def _phase(
    quiet: httpx.AsyncClient,
    quiet_run: str,
    noisy: httpx.AsyncClient | None,
    noisy_runs: list[str],
    seconds: float,
    polite: bool = False,
    mode: QuietMode = QuietMode(),
) -> dict[str, Any]:
    stop = asyncio.Event()
    outcomes: Counter[int] = Counter()
    flooders = (
        [asyncio.create_task(_flood(noisy, run, stop, outcomes, polite)) for run in noisy_runs]
        if noisy
        else []
    )
    await asyncio.sleep(0.5 if flooders else 0)  # let the flood build up first
    before = _scrape((await quiet.get("/metrics")).text)
    started = time.perf_counter()
    latencies, visible = await _quiet_writes(quiet, quiet_run, seconds, mode)
    elapsed = time.perf_counter() - started
    after = _scrape((await quiet.get("/metrics")).text)
    stop.set()
    await asyncio.gather(*flooders)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = delta["runledger_projector_batch_seconds_count"]
    waits = delta["runledger_write_wait_seconds_count"]
    return {
        "projector_batches_per_s": round(batches / elapsed, 1),
        "projector_mean_batch_ms": round(delta["runledger_projector_batch_seconds_sum"] / batches * 1000, 1),
        "projector_busy_fraction": round(delta["runledger_projector_batch_seconds_sum"] / elapsed, 2),
        "api_mean_write_wait_ms": (  # none with --quiet-ack and no flood
            round(delta["runledger_write_wait_seconds_sum"] / waits * 1000, 1) if waits else None
        ),
        "quiet_writes": len(latencies),
        "quiet_p50_ms": _pct(latencies, 0.5),
        "quiet_p99_ms": _pct(latencies, 0.99),
        "quiet_mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        **(
            {"quiet_visible_p50_ms": _pct(visible, 0.5), "quiet_visible_p99_ms": _pct(visible, 0.99)}
            if visible
            else {}
        ),
        "noisy_accepted_per_s": round(outcomes[200] / elapsed, 1),
        "noisy_rejected_429_per_s": round(outcomes[429] / elapsed, 1),
        "noisy_other_statuses": {str(k): v for k, v in outcomes.items() if k not in (200, 429)},
    }


@dataclass
class _Setup:
    """One stack with its two tenants, ready to measure."""

    name: str
    admin: httpx.AsyncClient
    quiet: httpx.AsyncClient
    noisy: httpx.AsyncClient
    quiet_run: str
    noisy_runs: list[str]
    results: dict[str, Any]

    async def set_quota(self, limit: int | None) -> None:
        body = {"events_per_second": limit, "max_points": None}
        (await self.admin.put("/api/v1/tenants/noisy/quotas", json=body)).raise_for_status()


def _stack(tarpit_max_s: float | None) -> contextlib.AbstractContextManager[Supervisor]:
    """An embedded stack; with `tarpit_max_s`, its API runs with that tarpit setting."""
    return embedded_stack() if tarpit_max_s is None else embedded_stack(api_tarpit_max_s=tarpit_max_s)


async def _setup(
    name: str, stack: Supervisor, concurrency: int, clients: contextlib.AsyncExitStack
) -> _Setup:
    info = json.loads(stack.settings.connection_file.read_text())
    limits = httpx.Limits(max_connections=concurrency + 4)

    def client(key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            trust_env=False,
            limits=limits,
        )

    admin = await clients.enter_async_context(client(info["api_key"]))
    quiet_key = await _create_tenant(admin, "quiet")
    noisy_key = await _create_tenant(admin, "noisy")
    quiet = await clients.enter_async_context(client(quiet_key))
    noisy = await clients.enter_async_context(client(noisy_key))
    quiet_run = await _new_run(quiet, "latency")
    noisy_runs = [await _new_run(noisy, "flood") for _ in range(concurrency)]
    results = {"tarpit_max_s": stack.settings.api_tarpit_max_s}
    return _Setup(name, admin, quiet, noisy, quiet_run, noisy_runs, results)


async def _main(
    seconds: float, concurrency: int, quotas: list[int], tarpits: list[float] | None, mode: QuietMode
) -> dict[str, Any]:
    variants: list[float | None] = list(tarpits) if tarpits else [None]
    with contextlib.ExitStack() as stacks:
        running = [stacks.enter_context(_stack(value)) for value in variants]
        async with contextlib.AsyncExitStack() as clients:
            setups = [
                await _setup(
                    f"tarpit_max_s_{value}" if value is not None else "", stack, concurrency, clients
                )
                for value, stack in zip(variants, running, strict=True)
            ]
            turn = 0

            async def each(phase: str, limit: int | None, flood: bool, polite: bool = False) -> None:
                # Every stack in turn, the order alternating, so drift hits all alike.
                nonlocal turn
                order = setups if turn % 2 == 0 else setups[::-1]
                turn += 1
                for setup in order:
                    if flood:
                        await setup.set_quota(limit)
                    noisy = setup.noisy if flood else None
                    runs = setup.noisy_runs if flood else []
                    setup.results[phase] = await _phase(
                        setup.quiet, setup.quiet_run, noisy, runs, seconds, polite, mode
                    )

            await each("baseline", None, flood=False)
            for limit in quotas:
                for polite in (True, False):
                    await each(
                        f"flood_quota_{limit}_{'polite' if polite else 'hostile'}", limit, True, polite
                    )
            await each("flood_unlimited", None, flood=True)
            for setup in setups:
                base = setup.results["baseline"]["quiet_p99_ms"]
                floods = [phase for phase in list(setup.results) if phase.startswith("flood")]
                setup.results["quiet_p99_ratio_to_baseline"] = {
                    phase: round(setup.results[phase]["quiet_p99_ms"] / base, 2) for phase in floods
                }
                if mode.ack:
                    seen = setup.results["baseline"]["quiet_visible_p99_ms"]
                    setup.results["quiet_visible_p99_ratio_to_baseline"] = {
                        phase: round(setup.results[phase]["quiet_visible_p99_ms"] / seen, 2)
                        for phase in floods
                    }
            summary: dict[str, Any] = {
                "seconds_per_phase": seconds,
                "concurrency": concurrency,
                "quiet": f"wait=false at {mode.rate} writes/s"
                if mode.ack
                else "each write waits for projection",
            }
            if tarpits is None:
                summary.update(setups[0].results)
            else:
                summary.update({setup.name: setup.results for setup in setups})
            return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent writers of the noisy tenant")
    parser.add_argument(
        "--quotas",
        type=int,
        nargs="+",
        default=[5, 20],
        help="events/s quotas of the noisy tenant, one phase each",
    )
    parser.add_argument(
        "--tarpit-max-s",
        type=float,
        nargs="+",
        default=None,
        help="RUNLEDGER_API_TARPIT_MAX_S values to compare (one stack each, phases alternating);"
        " default: one stack with the configured setting",
    )
    parser.add_argument(
        "--quiet-ack",
        action="store_true",
        help="the quiet tenant writes with ?wait=false (and its writes' visibility is timed too)",
    )
    parser.add_argument("--quiet-rate", type=float, default=10.0, help="--quiet-ack: writes per second")
    args = parser.parse_args()
    mode = QuietMode(args.quiet_ack, args.quiet_rate)
    result = asyncio.run(_main(args.seconds, args.concurrency, args.quotas, args.tarpit_max_s, mode))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
