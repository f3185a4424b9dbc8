"""Noisy neighbour: does one tenant flooding the API slow another's writes? (`make bench-tenancy`)

On the real embedded stack, as a platform operator would set it up through the
admin API: the bootstrap key creates tenants `quiet` and `noisy` (each with an admin
key), then the quiet tenant writes small metric batches one after the other and we
record each write's latency (a write returns once projected: read-your-writes).
Three phases side by side in one run, so the ratios hold on a noisy machine:

  baseline   quiet alone
  flood      noisy floods with CONCURRENCY writers of `--noisy-points`-point writes (200),
             under each events/s quota (`--quotas`), then each points/s quota
             (`--points-quotas`): polite writers wait a 429's Retry-After (as the SDK
             does), hostile ones retry at once
  unlimited  the same flood with the quota removed

`--quiet-ack` makes the quiet tenant write with `?wait=false` (answered at the broker's ack)
at `--quiet-rate` writes/s, and time each write's visibility too: from its start until a read
given its consistency_token returns.

The noisy tenant's writers run in a process of their own (as separate clients would): in the
quiet tenant's event loop their request handling would delay its requests and count as the
server's latency. `--flood-in-loop` puts them back in that loop, to compare.

`--tarpit-max-s 0 2` compares settings of RUNLEDGER_API_TARPIT_MAX_S (how long the API
holds a write retried before its 429's Retry-After; 0 = off): one stack per value,
all running, each phase run on every stack in turn (the order alternating), so the
values see the same machine. `--compare FIELD V1 V2 ...` does the same for any Settings
field (e.g. `--compare projector_max_wait_ms 5 20`). A last phase repeats the baseline, so
drift over the run (the broker's log grows) shows apart from the flood's effect.

Prints a JSON summary (copied into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import httpx
import psutil

from bench.stack import cpu_seconds, embedded_stack, stack_processes
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
    client: httpx.AsyncClient,
    run_id: str,
    points: int,
    stop: asyncio.Event,
    outcomes: Counter[int],
    polite: bool,
) -> None:
    """Write `points`-point writes as fast as answers come; `polite` waits a 429's Retry-After
    as the SDK does."""
    step = 0
    while not stop.is_set():
        response = await client.post(f"/api/v1/runs/{run_id}/metrics", json=_points(step, points))
        outcomes[response.status_code] += 1
        step += 1
        if polite and response.status_code == 429:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), float(response.headers["retry-after"]))


@dataclass(frozen=True)
class NoisyTenant:
    """Where and as whom the noisy tenant writes, and into which runs (one writer each)."""

    api_url: str
    key: str
    runs: list[str]
    points_per_write: int = 200


def _client(api_url: str, key: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=api_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        trust_env=False,
        limits=httpx.Limits(max_connections=connections),
    )


def _flood_process(
    noisy: NoisyTenant, polite: bool, ready: ProcessEvent, stop: ProcessEvent, results: Any
) -> None:
    """The noisy tenant's writers in their own process and event loop, until `stop`; their
    status counts go to `results`."""

    async def flood() -> None:
        outcomes: Counter[int] = Counter()
        stopped = asyncio.Event()
        async with _client(noisy.api_url, noisy.key, len(noisy.runs) + 4) as client:
            writers = [
                asyncio.create_task(_flood(client, run, noisy.points_per_write, stopped, outcomes, polite))
                for run in noisy.runs
            ]
            ready.set()
            await asyncio.to_thread(stop.wait)
            stopped.set()
            await asyncio.gather(*writers)
        results.put(dict(outcomes))

    asyncio.run(flood())


class _FloodInProcess:
    """The noisy tenant's flood in a child process, for the length of a phase."""

    def __init__(self, noisy: NoisyTenant, polite: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop, self._results = ctx.Event(), ctx.Event(), ctx.Queue()
        self._process = ctx.Process(
            target=_flood_process, args=(noisy, polite, self._ready, self._stop, self._results), daemon=True
        )

    async def start(self) -> None:
        self._process.start()
        if not await asyncio.to_thread(self._ready.wait, 60):
            raise RuntimeError("the flood process did not start in 60 s")

    async def stop(self) -> Counter[int]:
        self._stop.set()
        outcomes: dict[int, int] = await asyncio.to_thread(self._results.get, True, 120)
        await asyncio.to_thread(self._process.join, 30)
        return Counter(outcomes)


class _FloodInLoop:
    """The noisy tenant's flood as tasks in this event loop (the earlier measurements' way)."""

    def __init__(self, client: httpx.AsyncClient, noisy: NoisyTenant, polite: bool) -> None:
        self._stopped = asyncio.Event()
        self._outcomes: Counter[int] = Counter()
        self._args = (client, noisy, polite)
        self._writers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        client, noisy, polite = self._args
        self._writers = [
            asyncio.create_task(
                _flood(client, run, noisy.points_per_write, self._stopped, self._outcomes, polite)
            )
            for run in noisy.runs
        ]

    async def stop(self) -> Counter[int]:
        self._stopped.set()
        await asyncio.gather(*self._writers)
        return self._outcomes


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


def _parts_cpu_s(stack: Supervisor) -> dict[str, float]:
    """Cumulative CPU seconds of the stack's parts: the services' main process (API, projector,
    chdb), its children (the analysis shards), the broker, PostgreSQL."""
    parts = stack_processes(stack)
    return {
        "services_main": cpu_seconds(parts["services"][:1]),
        "analysis": cpu_seconds(parts["services"][1:]),
        "broker": cpu_seconds(parts["broker"]),
        "postgres": cpu_seconds(parts["postgres"]),
    }


async def _phase(
    stack: Supervisor,
    quiet: httpx.AsyncClient,
    quiet_run: str,
    flood: _FloodInProcess | _FloodInLoop | None,
    seconds: float,
    mode: QuietMode = QuietMode(),
) -> dict[str, Any]:
    if flood is not None:
        await flood.start()
        await asyncio.sleep(0.5)  # let the flood build up first
    before = _scrape((await quiet.get("/metrics")).text)
    cpu_before, parts_before = psutil.cpu_times(), _parts_cpu_s(stack)
    started = time.perf_counter()
    latencies, visible = await _quiet_writes(quiet, quiet_run, seconds, mode)
    elapsed = time.perf_counter() - started
    cpu_after, parts_after = psutil.cpu_times(), _parts_cpu_s(stack)
    after = _scrape((await quiet.get("/metrics")).text)
    outcomes = await flood.stop() if flood is not None else Counter[int]()
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = delta["runledger_projector_batch_seconds_count"]
    waits = delta["runledger_write_wait_seconds_count"]
    spent = sum(cpu_after) - sum(cpu_before)
    idle = (cpu_after.idle + cpu_after.iowait) - (cpu_before.idle + cpu_before.iowait)
    return {
        # The whole machine (stack, both tenants' clients): near 1.0, every part waits for a core.
        "machine_cpu_busy_fraction": round(1 - idle / spent, 2) if spent else None,
        "cores_used": {
            part: round((parts_after[part] - parts_before[part]) / elapsed, 2) for part in parts_after
        },
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
    noisy_tenant: NoisyTenant
    results: dict[str, Any]
    stack: Supervisor

    def flood(self, polite: bool, in_loop: bool) -> _FloodInProcess | _FloodInLoop:
        if in_loop:
            return _FloodInLoop(self.noisy, self.noisy_tenant, polite)
        return _FloodInProcess(self.noisy_tenant, polite)

    async def set_quota(self, events: int | None, points: int | None = None) -> None:
        body = {"events_per_second": events, "points_per_second": points, "max_points": None}
        (await self.admin.put("/api/v1/tenants/noisy/quotas", json=body)).raise_for_status()


async def _setup(
    name: str, stack: Supervisor, concurrency: int, noisy_points: int, clients: contextlib.AsyncExitStack
) -> _Setup:
    info = json.loads(stack.settings.connection_file.read_text())

    def client(key: str) -> httpx.AsyncClient:
        return _client(stack.api_url, key, concurrency + 4)

    admin = await clients.enter_async_context(client(info["api_key"]))
    quiet_key = await _create_tenant(admin, "quiet")
    noisy_key = await _create_tenant(admin, "noisy")
    quiet = await clients.enter_async_context(client(quiet_key))
    noisy = await clients.enter_async_context(client(noisy_key))
    quiet_run = await _new_run(quiet, "latency")
    noisy_runs = [await _new_run(noisy, "flood") for _ in range(concurrency)]
    results: dict[str, Any] = {"tarpit_max_s": stack.settings.api_tarpit_max_s}
    noisy_tenant = NoisyTenant(stack.api_url, noisy_key, noisy_runs, noisy_points)
    return _Setup(name, admin, quiet, noisy, quiet_run, noisy_tenant, results, stack)


async def _main(
    seconds: float,
    concurrency: int,
    quotas: list[int],
    points_quotas: list[int],
    noisy_points: int,
    compared: tuple[str, list[float]] | None,
    mode: QuietMode,
    flood_in_loop: bool,
) -> dict[str, Any]:
    # One stack per compared value (Settings overrides), or one with the configured settings.
    variants: list[dict[str, float]] = [{compared[0]: v} for v in compared[1]] if compared else [{}]
    with contextlib.ExitStack() as stacks:
        running = [stacks.enter_context(embedded_stack(**overrides)) for overrides in variants]
        async with contextlib.AsyncExitStack() as clients:
            setups = [
                await _setup(
                    "_".join(f"{k}_{v}" for k, v in overrides.items()),
                    stack,
                    concurrency,
                    noisy_points,
                    clients,
                )
                for overrides, stack in zip(variants, running, strict=True)
            ]
            turn = 0

            async def each(
                phase: str, limit: int | None, flood: bool, polite: bool = False, points: int | None = None
            ) -> None:
                # Every stack in turn, the order alternating, so drift hits all alike.
                nonlocal turn
                order = setups if turn % 2 == 0 else setups[::-1]
                turn += 1
                for setup in order:
                    if flood:
                        await setup.set_quota(limit, points)
                    flooding = setup.flood(polite, flood_in_loop) if flood else None
                    setup.results[phase] = await _phase(
                        setup.stack, setup.quiet, setup.quiet_run, flooding, seconds, mode
                    )

            await each("baseline", None, flood=False)
            for limit in quotas:
                for polite in (True, False):
                    await each(
                        f"flood_quota_{limit}_{'polite' if polite else 'hostile'}", limit, True, polite
                    )
            for limit in points_quotas:
                for polite in (True, False):
                    await each(
                        f"flood_points_quota_{limit}_{'polite' if polite else 'hostile'}",
                        None,
                        True,
                        polite,
                        points=limit,
                    )
            await each("flood_unlimited", None, flood=True)
            await each("baseline_again", None, flood=False)
            for setup in setups:
                base = setup.results["baseline"]["quiet_p99_ms"]
                floods = [p for p in list(setup.results) if p.startswith("flood") or p == "baseline_again"]
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
                "noisy_points_per_write": noisy_points,
                "quiet": f"wait=false at {mode.rate} writes/s"
                if mode.ack
                else "each write waits for projection",
                "flood": "in the quiet client's event loop" if flood_in_loop else "in a process of its own",
            }
            if compared is None:
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
        "--points-quotas",
        type=int,
        nargs="*",
        default=[],
        help="points/s quotas of the noisy tenant, one phase each (after the events/s ones)",
    )
    parser.add_argument(
        "--noisy-points", type=int, default=200, help="points in each write of the noisy tenant"
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
        "--compare",
        nargs="+",
        metavar=("FIELD", "VALUE"),
        default=None,
        help="a Settings field and the values to compare, as --tarpit-max-s does",
    )
    parser.add_argument(
        "--quiet-ack",
        action="store_true",
        help="the quiet tenant writes with ?wait=false (and its writes' visibility is timed too)",
    )
    parser.add_argument("--quiet-rate", type=float, default=10.0, help="--quiet-ack: writes per second")
    parser.add_argument(
        "--flood-in-loop",
        action="store_true",
        help="run the noisy writers in the quiet client's event loop (as measured before) instead of"
        " a process of their own",
    )
    args = parser.parse_args()
    mode = QuietMode(args.quiet_ack, args.quiet_rate)
    compared: tuple[str, list[float]] | None = None
    if args.tarpit_max_s:
        compared = ("api_tarpit_max_s", args.tarpit_max_s)
    elif args.compare:
        if len(args.compare) < 2:
            parser.error("--compare needs a field and at least one value")
        compared = (args.compare[0], [float(v) for v in args.compare[1:]])
    result = asyncio.run(
        _main(
            args.seconds,
            args.concurrency,
            args.quotas,
            args.points_quotas,
            args.noisy_points,
            compared,
            mode,
            args.flood_in_loop,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
