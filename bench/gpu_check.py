"""Checks the SDK's GPU system metrics on a real NVIDIA GPU (needs torch with CUDA and nvidia-ml-py).

    python bench/gpu_check.py               # GPU: idle, bf16 matmul load, idle
    python bench/gpu_check.py --cpu-smoke   # no torch/GPU: the CPU metrics path only

One run samples system metrics every --interval s (into an InMemoryTransport, no
network) through three phases: idle, a loop of bf16 8192x8192 matmuls on cuda:0 (with
torch.cuda.synchronize after each), idle again. The recorded events are decoded and, per
phase, the mean and max of system/gpu0/* are printed with the matmuls' TFLOP/s and the
sampler's cost per sample, and written as JSON to $OUT/gpu_check.json when OUT is set.
Exits 1 when no GPU metric was recorded or GPU utilisation under load is not above idle
(--cpu-smoke: when a CPU metric is missing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:  # run from a checkout without installing: the SDK lives in libs/
    import runledger_sdk  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libs"))

import runledger_sdk as rl
from runledger.events.codec import decode, metric_arrays
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType
from runledger_sdk.system_metrics import SystemSampler

GPU_KEYS = [
    f"system/gpu0/{m}" for m in ("utilization_percent", "memory_used_bytes", "power_watts", "temperature_c")
]
CPU_KEYS = [
    "system/cpu_percent",
    "system/process_rss_bytes",
    "system/system_memory_used_bytes",
    "system/system_memory_percent",
    "system/network_sent_bytes",
    "system/network_recv_bytes",
    "system/wall_time_s",
]
PHASES = ("idle_before", "load", "idle_after")


def load_torch() -> Any:
    """torch, imported only for the GPU check (not installed for --cpu-smoke, nor for mypy here)."""
    return importlib.import_module("torch")


def gpu_load(seconds: float) -> float:
    """bf16 8192x8192 matmuls on cuda:0 for `seconds`; the achieved TFLOP/s."""
    torch = load_torch()

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):  # warm-up: cuBLAS picks its kernel
        a @ b
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        torch.cuda.synchronize()
        count += 1
    elapsed = time.perf_counter() - started
    del a, b
    torch.cuda.empty_cache()  # so the idle phase after shows the memory given back
    return 2 * n**3 * count / elapsed / 1e12


def cpu_load(seconds: float) -> None:
    """A busy Python loop for `seconds` (the smoke check's load)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def cpu_only_cost(samples: int = 100) -> dict[str, float]:
    """Cost of one sample without NVML, in microseconds (a sampler on a throwaway sink)."""

    class Sink:
        def __init__(self) -> None:
            self.n = 0

        def log_metrics(
            self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None
        ) -> None:
            self.n += 1

    sink = Sink()
    sampler = SystemSampler(sink, 0.01, gpu=False)
    sampler.start()
    while sink.n < samples:
        time.sleep(0.05)
    sampler.stop()
    return cost(sampler)


def cost(sampler: SystemSampler) -> dict[str, float]:
    n = max(sampler.samples, 1)
    return {
        "samples": sampler.samples,
        "cpu_us_per_sample": round(sampler.sample_cpu_seconds / n * 1e6, 1),
        "wall_us_per_sample": round(sampler.sample_wall_seconds / n * 1e6, 1),
        "max_wall_us": round(sampler.max_sample_wall_seconds * 1e6, 1),
    }


def system_points(transport: rl.InMemoryTransport) -> dict[str, list[tuple[int, float]]]:
    """key -> [(timestamp ms, value)] of every system/* point recorded."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in transport.records:
        event = decode(record.value)
        if event.envelope.type is not EventType.METRICS_LOGGED:
            continue
        assert isinstance(event.payload, MetricColumns)
        kidx, values, _, stamps = metric_arrays(event.payload)
        for k, v, t in zip(kidx.tolist(), values.tolist(), stamps.tolist(), strict=True):
            key = event.payload.keys[k]
            if key.startswith("system/"):
                out.setdefault(key, []).append((t, v))
    return out


def phase_stats(
    points: dict[str, list[tuple[int, float]]], keys: list[str], bounds: list[float], settle_s: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Per phase and key: mean, max and count of the samples taken inside that phase.

    Samples less than `settle_s` after a phase starts are left out: NVML's utilisation is
    an average over its last sample period, so they still describe the phase before.
    """
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for name, start, end in zip(PHASES, bounds, bounds[1:], strict=False):
        stats[name] = {}
        for key in keys:
            inside = [v for t, v in points.get(key, []) if start + settle_s <= t / 1000 < end]
            if inside:
                stats[name][key] = {"mean": statistics.fmean(inside), "max": max(inside), "n": len(inside)}
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the SDK's system metrics on a GPU.")
    parser.add_argument("--cpu-smoke", action="store_true", help="no torch/GPU: check the CPU metrics path")
    parser.add_argument("--interval", type=float, default=None, help="sample interval (0.5; smoke 0.1)")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    interval = args.interval or (0.1 if smoke else 0.5)
    idle_s, load_s = (0.6, 1.2) if smoke else (3.0, 8.0)
    load: Callable[[float], float | None] = cpu_load if smoke else gpu_load

    result: dict[str, Any] = {"mode": "cpu-smoke" if smoke else "gpu", "interval_s": interval}
    result["cpu_only_cost"] = cpu_only_cost()
    if not smoke:
        torch = load_torch()

        if not torch.cuda.is_available():
            print("FAIL: torch sees no CUDA device", file=sys.stderr)
            return 1
        result["device"] = torch.cuda.get_device_name(0)
        # Create the CUDA context now: its start-up (seconds, GPU idle) would else count as load.
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()

    transport = rl.InMemoryTransport()
    client = rl.init(
        transport=transport,
        spool_dir=tempfile.mkdtemp(prefix="gpu-check-spool-"),
        system_metrics_interval_s=interval,
    )
    bounds = [time.time()]
    with rl.start_run(experiment="gpu-check"):
        sampler = client.sampler
        assert sampler is not None, "a top-level run starts the sampler"
        time.sleep(idle_s)
        bounds.append(time.time())
        tflops = load(load_s)
        result["matmul_tflops"] = None if tflops is None else round(tflops, 1)
        bounds.append(time.time())
        time.sleep(idle_s)
        bounds.append(time.time())
    rl.flush(10)
    rl.shutdown(10)
    result["run_sampler_cost"] = cost(sampler)
    result["gpus_sampled"] = sampler.gpu_count

    points = system_points(transport)
    keys = ["system/cpu_percent", "system/process_rss_bytes"] if smoke else GPU_KEYS
    result["phases"] = phase_stats(points, keys, bounds, settle_s=0 if smoke else interval)
    result["keys"] = sorted(points)
    failures: list[str] = []
    if smoke:
        failures += [f"{key} not recorded" for key in CPU_KEYS if key not in points]
    else:
        if not any(key.startswith("system/gpu") for key in points):
            failures.append("no GPU metric recorded")
        util = {p: s.get(GPU_KEYS[0], {}).get("mean") for p, s in result["phases"].items()}
        idle = [u for p, u in util.items() if p != "load" and u is not None]
        if util["load"] is None or not idle or util["load"] <= max(idle):
            failures.append(f"GPU utilisation under load not above idle: {util}")
    result["failures"] = failures

    for phase, stats in result["phases"].items():
        shown = ", ".join(
            f"{k.removeprefix('system/')} mean {s['mean']:.4g} max {s['max']:.4g}" for k, s in stats.items()
        )
        print(f"{phase:12s} {shown}")
    print(f"matmul TFLOP/s {result['matmul_tflops']}; sampler cost in the run {result['run_sampler_cost']}")
    print(f"cpu-only sampler cost {result['cpu_only_cost']}")
    text = json.dumps(result, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text + "\n")
    print("FAIL: " + "; ".join(failures) if failures else "OK", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
