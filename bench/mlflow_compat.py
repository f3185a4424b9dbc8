"""The same workload through the unmodified mlflow client, against RunLedger and a real `mlflow server`.

`make bench-mlflow`. RunLedger: the embedded stack (bench/stack.py), its bootstrap key as
MLFLOW_TRACKING_TOKEN. MLflow: `mlflow server` (the `bench-mlflow` extra, in its own venv
since it pins pyarrow<26) on a Postgres backend (an EmbeddedPostgres of its own), on the same
machine in the same run. Both Postgres servers run with fsync on. Phases, per target:

  log_batch   points/s of MlflowClient.log_batch, 1,000 metrics per call, 1 and 4 client processes
  seed        10,000+ runs (create_run with tags, one log_batch of params and metrics), 4 processes

Both write phases end with a read of what each process wrote (get_run, search_runs), inside the
timed wall, so their rates count writes that are visible, not only acknowledged. RunLedger runs
once per `--write-ack` mode (RUNLEDGER_MLFLOW_WRITE_ACK: `broker` answers run writes on the
broker's ack, `projection` once projected), side by side in the same run.
  search      search_runs latency over those runs: filters, order_by, and every run into pandas
  history     a 1M-point series (log_batch from 4 processes), then get_metric_history, timed
              in a child process killed after --history-timeout (reported as "> N s")

Every client call runs in spawned child processes (the client keeps global state). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx

from bench.stack import embedded_stack

DEFAULT_MLFLOW = Path(sys.prefix) / "mlflow-server" / "bin" / "mlflow"  # where `make bench-mlflow` puts it


@dataclass(frozen=True)
class Target:
    name: str
    uri: str
    credentials: dict[str, str]


# --- client side: each task runs in a spawned process ------------------------------------------


def _client(target: Target) -> Any:
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(var, None)
    os.environ.update(target.credentials)
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", MLFLOW_HTTP_REQUEST_TIMEOUT="900")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=target.uri)


def _task_setup(target: Target, args: dict[str, Any]) -> dict[str, Any]:
    """An experiment and `runs` empty runs in it."""
    client = _client(target)
    exp = client.create_experiment(f"{args['name']}-{uuid.uuid4().hex[:6]}")
    return {
        "experiment_id": exp,
        "run_ids": [client.create_run(exp).info.run_id for _ in range(args["runs"])],
    }


def _task_log_batch(target: Target, args: dict[str, Any]) -> dict[str, Any]:
    """`calls` log_batch calls of 1,000 points each (`keys` keys x 1000/keys steps); latencies."""
    from mlflow.entities import Metric

    client = _client(target)
    keys, per_key = args["keys"], 1000 // args["keys"]
    now = int(time.time() * 1000)
    latencies: list[float] = []
    for call in range(args["calls"]):
        step0 = args["first_step"] + call * per_key
        batch = [
            Metric(f"m{k}" if keys > 1 else args.get("key", "m0"), (step + k) * 0.001, now + step, step)
            for step in range(step0, step0 + per_key)
            for k in range(keys)
        ]
        started = time.perf_counter()
        client.log_batch(args["run_id"], metrics=batch, synchronous=True)
        latencies.append(time.perf_counter() - started)
    client.get_run(args["run_id"])  # visible: the wall counts until the writes can be read
    return {"latencies": latencies, "points": args["calls"] * 1000}


def _task_seed(target: Target, args: dict[str, Any]) -> dict[str, Any]:
    """Runs with 2 params, 2 tags, 3 metrics each: create_run + one log_batch."""
    from mlflow.entities import Metric, Param

    client = _client(target)
    now = int(time.time() * 1000)
    for i in range(args["first"], args["first"] + args["count"]):
        tags = {"team": ("vision", "nlp", "speech", "tabular")[i % 4], "seed": str(i % 10)}
        run = client.create_run(args["experiment_id"], tags=tags, run_name=f"run-{i:06d}", start_time=now + i)
        params = [Param("model", ("cnn", "rnn", "mlp")[i % 3]), Param("lr", str(10 ** -(i % 4)))]
        metrics = [Metric("acc", (i * 7919 % 10_000) / 10_000, now, 0), Metric("loss", 1 / (i + 1), now, 0)]
        metrics.append(Metric("epoch", float(i % 50), now, 0))
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.search_runs([args["experiment_id"]], max_results=1)  # visible, as in _task_log_batch
    return {"count": args["count"]}


SEARCHES: dict[str, tuple[str, list[str] | None, int]] = {
    "metric_filter_order_top100": ("metrics.acc > 0.9", ["metrics.acc DESC"], 100),
    "param_and_tag_like_1000": ("params.model = 'cnn' AND tags.team LIKE 'vis%'", None, 1000),
    "default_order_first_1000": ("", None, 1000),
    "run_name_like_order_by_param": ("attributes.run_name LIKE 'run-0001%'", ["params.lr ASC"], 1000),
}


def _task_search(target: Target, args: dict[str, Any]) -> dict[str, Any]:
    """Median/min latency of each search (after one warm-up), and all runs into pandas."""
    import mlflow

    client = _client(target)
    mlflow.set_tracking_uri(target.uri)
    exp, repeat = args["experiment_id"], args["repeat"]
    out: dict[str, Any] = {}
    for label, (filter_string, order_by, max_results) in SEARCHES.items():
        times: list[float] = []
        found = 0
        for _ in range(repeat + 1):
            started = time.perf_counter()
            found = len(client.search_runs([exp], filter_string, order_by=order_by, max_results=max_results))
            times.append(time.perf_counter() - started)
        out[label] = {
            "runs": found,
            "median_ms": _ms(statistics.median(times[1:])),
            "min_ms": _ms(min(times[1:])),
        }
    started = time.perf_counter()
    frame = mlflow.search_runs(experiment_ids=[exp])
    out["all_runs_into_pandas"] = {"runs": len(frame), "s": round(time.perf_counter() - started, 3)}
    return out


def _task_history(target: Target, args: dict[str, Any]) -> dict[str, Any]:
    client = _client(target)
    started = time.perf_counter()
    history = client.get_metric_history(args["run_id"], args["key"])
    elapsed = time.perf_counter() - started
    ok = [m.step for m in history[:1000]] == list(range(min(1000, len(history))))
    return {"points": len(history), "s": round(elapsed, 3), "first_steps_ok": ok}


TASKS: dict[str, Callable[[Target, dict[str, Any]], dict[str, Any]]] = {
    "setup": _task_setup,
    "log_batch": _task_log_batch,
    "seed": _task_seed,
    "search": _task_search,
    "history": _task_history,
}


def _child(task: str, target: Target, args: dict[str, Any], ready: Any, go: EventType, results: Any) -> None:
    try:
        _client(target)  # imports mlflow before the clock starts
        ready.put(True)
        go.wait()
        results.put(TASKS[task](target, args))
    except Exception as exc:
        ready.put(False)
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def run_parallel(
    task: str, target: Target, arg_list: list[dict[str, Any]], timeout: float = 3600
) -> tuple[list[dict[str, Any]], float]:
    """One child per args, all released at once; (results, wall seconds). A child past `timeout` is killed."""
    ctx = mp.get_context("spawn")
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    # daemon: an interrupted benchmark does not wait for them
    children = [
        ctx.Process(target=_child, args=(task, target, a, ready, go, results), daemon=True) for a in arg_list
    ]
    out: list[dict[str, Any]] = []
    try:
        for child in children:
            child.start()
        for _ in children:  # importing mlflow takes seconds on a busy 2-core box
            ready.get(timeout=180)
        started = time.perf_counter()
        go.set()
        deadline = time.monotonic() + timeout
        while len(out) < len(children):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(results.get(timeout=min(left, 5)))
            except queue.Empty:
                if not any(c.is_alive() for c in children) and results.empty():
                    break
        wall = time.perf_counter() - started
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()
    if len(out) < len(children):
        out.append({"error": f"timed out after {timeout:.0f} s", "timeout": True})
    return out, wall


def _check(results: list[dict[str, Any]]) -> None:
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))


# --- the workload -------------------------------------------------------------------------------


def bench_target(target: Target, opts: argparse.Namespace, out: dict[str, Any]) -> None:
    """Fills `out` phase by phase (a failure keeps the phases before it)."""
    out["uri"] = target.uri
    [setup], _ = run_parallel("setup", target, [{"name": "bench-logbatch", "runs": 4}])
    _check([setup])
    runs = setup["run_ids"]

    for procs in (1, 4):
        args = [{"run_id": runs[p], "calls": opts.calls, "keys": 100, "first_step": 0} for p in range(procs)]
        results, wall = run_parallel("log_batch", target, args)
        _check(results)
        latencies = sorted(lat for r in results for lat in r["latencies"])
        points = sum(r["points"] for r in results)
        out[f"log_batch_{procs}_proc"] = {
            "points": points,
            "wall_s": round(wall, 2),
            "points_per_s": round(points / wall),
            "request_median_ms": _ms(statistics.median(latencies)),
            "request_p95_ms": _ms(latencies[int(0.95 * (len(latencies) - 1))]),
        }
        print(f"[{target.name}] log_batch {procs} proc: {out[f'log_batch_{procs}_proc']}", file=sys.stderr)

    [seed_exp], _ = run_parallel("setup", target, [{"name": "bench-search", "runs": 0}])
    _check([seed_exp])
    exp = seed_exp["experiment_id"]
    share = -(-opts.runs // opts.seed_procs)
    args = [
        {"experiment_id": exp, "first": p * share, "count": min(share, opts.runs - p * share)}
        for p in range(opts.seed_procs)
    ]
    results, wall = run_parallel("seed", target, args)
    _check(results)
    out["seed_runs"] = {"runs": opts.runs, "wall_s": round(wall, 1), "runs_per_s": round(opts.runs / wall, 1)}
    print(f"[{target.name}] seed: {out['seed_runs']}", file=sys.stderr)
    [search], _ = run_parallel("search", target, [{"experiment_id": exp, "repeat": opts.repeat}])
    _check([search])
    out["search_runs"] = search
    print(f"[{target.name}] search: {search}", file=sys.stderr)

    history_run = runs[0]
    per_proc = opts.history_points // 1000 // 4
    args = [
        {
            "run_id": history_run,
            "calls": per_proc,
            "keys": 1,
            "key": "series",
            "first_step": p * per_proc * 1000,
        }
        for p in range(4)
    ]
    results, wall = run_parallel("log_batch", target, args)
    _check(results)
    points = per_proc * 4 * 1000
    out["history_log"] = {"points": points, "wall_s": round(wall, 1), "points_per_s": round(points / wall)}
    print(f"[{target.name}] history log: {out['history_log']}", file=sys.stderr)
    [read], wall = run_parallel(
        "history", target, [{"run_id": history_run, "key": "series"}], opts.history_timeout
    )
    if read.get("timeout"):
        out["get_metric_history"] = {"points": points, "s": f"> {opts.history_timeout:.0f}"}
    else:
        _check([read])
        out["get_metric_history"] = read
    print(f"[{target.name}] history read: {out['get_metric_history']}", file=sys.stderr)


# --- the servers --------------------------------------------------------------------------------


@contextmanager
def runledger_target(write_ack: str) -> Iterator[Target]:
    """The embedded stack with RUNLEDGER_MLFLOW_WRITE_ACK=`write_ack`."""
    with embedded_stack(mlflow_write_ack=write_ack) as stack:
        info = json.loads(stack.settings.connection_file.read_text())
        name = "runledger" if write_ack == "broker" else f"runledger-{write_ack}"
        yield Target(name, stack.api_url, {"MLFLOW_TRACKING_TOKEN": info["api_key"]})


@contextmanager
def mlflow_target(mlflow_exe: Path) -> Iterator[Target]:
    """`mlflow server` (default workers) on a Postgres of its own, artifacts in a temp dir."""
    import asyncpg

    from runledger.embedded.ports import free_port, port_accepts
    from runledger.embedded.postgres import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="mlflow-bench-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    postgres = EmbeddedPostgres(root / "pg" / "data", 0)
    postgres.start()
    server: subprocess.Popen[bytes] | None = None
    try:

        async def create_db() -> None:
            conn = await asyncpg.connect(postgres.dsn)
            try:
                await conn.execute('CREATE DATABASE "mlflow"')
            finally:
                await conn.close()

        asyncio.run(create_db())
        backend = (
            postgres.dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + "/mlflow"
        )
        port = free_port()
        command = [
            str(mlflow_exe.absolute()),
            "server",
            "--backend-store-uri",
            backend,
            "--host",
            "127.0.0.1",
        ]
        command += ["--port", str(port), "--artifacts-destination", str(root / "artifacts")]
        log = (root / "mlflow-server.log").open("wb")
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # the first start migrates the schema
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(root / 'mlflow-server.log').read_text()[-3000:]}"
                )
            if port_accepts("127.0.0.1", port) and _healthy(url):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not become healthy in 300 s")
            time.sleep(1)
        yield Target("mlflow", url, {})
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", type=int, default=40, help="log_batch calls (1,000 points) per client process"
    )
    parser.add_argument("--runs", type=int, default=10_000, help="runs seeded for search_runs")
    parser.add_argument("--seed-procs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of each search")
    parser.add_argument("--history-points", type=int, default=1_000_000)
    parser.add_argument(
        "--history-timeout", type=float, default=300, help="cap on MLflow's get_metric_history"
    )
    parser.add_argument(
        "--mlflow", type=Path, default=DEFAULT_MLFLOW, help="`mlflow` of the bench-mlflow extra"
    )
    parser.add_argument("--only", choices=["runledger", "mlflow"], help="benchmark one side")
    parser.add_argument(
        "--write-ack",
        nargs="+",
        choices=["broker", "projection"],
        default=["broker"],
        help="RunLedger's RUNLEDGER_MLFLOW_WRITE_ACK modes, each benchmarked in turn",
    )
    opts = parser.parse_args()

    report: dict[str, Any] = {
        "workload": {
            "log_batch": f"{opts.calls} calls x 1,000 metrics per process, 1 and 4 processes",
            "search_runs_over": opts.runs,
            "history_points": opts.history_points,
            "client": "mlflow-skinny 3.17.2 (MlflowClient), unmodified",
        }
    }
    if opts.only != "mlflow":
        for write_ack in opts.write_ack:
            with runledger_target(write_ack) as target:
                report[target.name] = _guarded(target, opts)
    if opts.only != "runledger":
        if not opts.mlflow.exists():
            report["mlflow"] = {
                "skipped": f"{opts.mlflow} missing: install the bench-mlflow extra (make bench-mlflow)"
            }
        else:
            with mlflow_target(opts.mlflow) as target:
                report["mlflow"] = _guarded(target, opts)
    print(json.dumps(report, indent=2))


def _guarded(target: Target, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        bench_target(target, opts, out)
    except Exception as exc:  # report what failed, keep the figures so far and the other side's
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    main()
