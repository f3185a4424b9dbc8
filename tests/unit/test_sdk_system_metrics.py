"""SDK system metrics: the background sampler of CPU, memory, disk, network and GPU use."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runledger_sdk as rl
from runledger.events.codec import decode, metric_arrays
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType
from runledger_sdk.client import current_client
from runledger_sdk.system_metrics import THREAD_NAME, SystemSampler

INTERVAL = 0.05
CPU_KEYS = {
    "system/cpu_percent",
    "system/process_rss_bytes",
    "system/system_memory_used_bytes",
    "system/system_memory_percent",
    "system/network_sent_bytes",
    "system/network_recv_bytes",
    "system/wall_time_s",
}
GPU_FIELDS = (
    "utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_watts",
    "temperature_c",
)


def start_sdk(tmp_path: Path, interval: float) -> rl.InMemoryTransport:
    memory = rl.InMemoryTransport()
    rl.init(
        transport=memory,
        spool_dir=tmp_path / "spool",
        batch_interval_ms=20,
        system_metrics_interval_s=interval,
    )
    return memory


@pytest.fixture
def sdk(tmp_path: Path) -> Iterator[Callable[[float], rl.InMemoryTransport]]:
    yield lambda interval: start_sdk(tmp_path, interval)
    rl.shutdown(5)


def system_points(transport: rl.InMemoryTransport) -> dict[str, dict[str, list[tuple[int, float, int]]]]:
    """run id -> key -> [(step, value, timestamp)] of every system/* point, in arrival order."""
    assert rl.flush(5)
    out: dict[str, dict[str, list[tuple[int, float, int]]]] = {}
    for record in transport.records:
        event = decode(record.value)
        if event.envelope.type is not EventType.METRICS_LOGGED:
            continue
        payload = event.payload
        assert isinstance(payload, MetricColumns)
        kidx, values, steps, stamps = metric_arrays(payload)
        for k, v, s, t in zip(kidx.tolist(), values.tolist(), steps.tolist(), stamps.tolist(), strict=True):
            key = payload.keys[k]
            if key.startswith("system/"):
                run_id = event.envelope.run_id
                assert run_id is not None
                out.setdefault(run_id, {}).setdefault(key, []).append((s, v, t))
    return out


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sampled(count: int) -> Callable[[], bool]:
    """True once the process's sampler has logged `count` samples."""

    def check() -> bool:
        client = current_client()
        return client is not None and client.sampler is not None and client.sampler.samples >= count

    return check


def test_run_records_plausible_system_metrics(sdk: Callable[[float], rl.InMemoryTransport]) -> None:
    transport = sdk(INTERVAL)
    started_ms = time.time_ns() // 1_000_000
    with rl.start_run() as run:
        wait_for(sampled(4))
        sum(i * i for i in range(200_000))  # some CPU for cpu_percent to see
    ended_ms = time.time_ns() // 1_000_000
    series = system_points(transport)[run.run_id]

    assert set(series) >= CPU_KEYS
    for key, points in series.items():
        steps = [s for s, _, _ in points]
        assert steps == list(range(len(steps))), key  # step = sample index, every sample
        assert len(steps) >= 4
        stamps = [t for _, _, t in points]
        assert stamps == sorted(stamps) and started_ms <= stamps[0] and stamps[-1] <= ended_ms
    values = {key: [v for _, v, _ in points] for key, points in series.items()}
    assert all(v > 0 for v in values["system/process_rss_bytes"])
    assert all(0 <= v <= 100 for v in values["system/system_memory_percent"])
    assert all(v > 0 for v in values["system/system_memory_used_bytes"])
    assert all(v >= 0 for v in values["system/cpu_percent"])
    wall = values["system/wall_time_s"]
    assert all(b > a for a, b in itertools.pairwise(wall))
    # The first sample is due one interval after the start (CPU percent needs a period).
    assert INTERVAL - 0.005 <= wall[0] < INTERVAL + 2.0
    for key in ("network_sent_bytes", "network_recv_bytes", "disk_read_bytes", "disk_write_bytes"):
        counter = values.get("system/" + key, [])  # disk counters may be absent in a container
        assert all(v >= 0 for v in counter)
        assert counter == sorted(counter), "cumulative since the run started"


def test_run_shorter_than_the_interval_gets_a_closing_sample(
    sdk: Callable[[float], rl.InMemoryTransport],
) -> None:
    transport = sdk(60.0)  # far longer than the run: only the closing sample can come
    with rl.start_run() as run:
        rl.log_metric("loss", 0.5)
        time.sleep(0.3)
    series = system_points(transport)[run.run_id]
    assert set(series) >= CPU_KEYS
    assert all([s for s, _, _ in points] == [0] for points in series.values())
    (wall,) = (v for _, v, _ in series["system/wall_time_s"])
    assert 0.3 <= wall < 5.0, "the closing sample is taken when the run ends"
    decoded = [decode(r.value) for r in transport.records]
    of_run = [d.envelope.type for d in decoded if d.envelope.run_id == run.run_id]
    assert of_run[-1] is EventType.STATUS_CHANGED, "the closing sample goes out before the run's end"


def test_interval_zero_disables(sdk: Callable[[float], rl.InMemoryTransport]) -> None:
    transport = sdk(0)
    with rl.start_run():
        client = current_client()
        assert client is not None and client.sampler is None
        assert not sampler_threads()
        rl.log_metric("loss", 1.0)
        time.sleep(0.2)
    assert system_points(transport) == {}


def test_nested_runs_share_the_top_level_sampler(sdk: Callable[[float], rl.InMemoryTransport]) -> None:
    transport = sdk(INTERVAL)
    with rl.start_run() as outer:
        client = current_client()
        assert client is not None and client.sampler is not None
        sampler = client.sampler
        with rl.start_run(nested=True) as inner:
            wait_for(sampled(3))
            assert client.sampler is sampler
            assert len(sampler_threads()) == 1
        assert client.sampler is sampler, "ending a child keeps the parent's sampler"
        explicit = rl.start_run(parent=outer)
        explicit.end_run()
        assert client.sampler is sampler
    series = system_points(transport)
    assert set(series) == {outer.run_id}
    assert inner.run_id not in series and explicit.run_id not in series


def test_sampler_thread_ends_with_the_run(sdk: Callable[[float], rl.InMemoryTransport]) -> None:
    transport = sdk(INTERVAL)
    with rl.start_run() as first:
        wait_for(sampled(2))
        assert len(sampler_threads()) == 1
    assert not sampler_threads()
    client = current_client()
    assert client is not None and client.sampler is None
    last = max(s for s, _, _ in system_points(transport)[first.run_id]["system/wall_time_s"])
    time.sleep(3 * INTERVAL)
    # Nothing was logged after the run ended (its StatusChanged is its last event).
    assert max(s for s, _, _ in system_points(transport)[first.run_id]["system/wall_time_s"]) == last
    decoded = [decode(r.value) for r in transport.records]
    of_first = [d.envelope.type for d in decoded if d.envelope.run_id == first.run_id]
    assert of_first[-1] is EventType.STATUS_CHANGED

    # The next top-level run gets a new sampler, numbering its samples from 0 again.
    with rl.start_run() as second:
        wait_for(sampled(1))
    assert not sampler_threads()
    assert system_points(transport)[second.run_id]["system/wall_time_s"][0][0] == 0


def test_shutdown_stops_the_sampler(sdk: Callable[[float], rl.InMemoryTransport]) -> None:
    sdk(INTERVAL)
    rl.start_run()
    wait_for(sampled(1))
    rl.shutdown(5)  # ends the open run
    assert not sampler_threads()


def test_no_gpu_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    """Without NVML (pynvml missing, or no driver for it) GPU metrics are absent, quietly."""
    sink = Recorder()
    sampler = SystemSampler(sink, INTERVAL)
    with caplog.at_level(logging.DEBUG, logger="runledger_sdk"):
        sampler.start()
        wait_for(lambda: len(sink.samples) >= 2)
        sampler.stop()
    assert not sampler.alive
    if any(key.startswith("system/gpu") for sample in sink.samples for key in sample):
        pytest.skip("this machine has a GPU that NVML sees")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- the GPU path, through a stand-in for pynvml -----------------------------------------------------


class NVMLError(Exception):
    """Like pynvml.NVMLError_NotSupported."""


@dataclass
class Utilization:
    gpu: int
    memory: int


@dataclass
class MemoryInfo:
    total: int
    free: int
    used: int


class FakeNvml:
    """The few pynvml functions the sampler calls, for `gpus` GPUs; GPU 1 reports no power."""

    def __init__(self, gpus: int = 2, init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return ("handle", index)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return Utilization(gpu=40 + handle[1], memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return MemoryInfo(total=80 << 30, free=70 << 30, used=10 << 30)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        if handle[1] == 1:
            raise NVMLError("Not Supported")
        return 123_456  # milliwatts

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        return 55


class Recorder:
    """A sink keeping what the sampler logs."""

    def __init__(self) -> None:
        self.samples: list[dict[str, float]] = []
        self.steps: list[int | None] = []

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None:
        self.samples.append(dict(metrics))
        self.steps.append(step)


def run_sampler(nvml: FakeNvml, samples: int = 3, interval: float = 0.02) -> tuple[SystemSampler, Recorder]:
    sink = Recorder()
    sampler = SystemSampler(sink, interval, nvml=nvml)
    sampler.start()
    wait_for(lambda: len(sink.samples) >= samples)
    sampler.stop()
    assert not sampler.alive
    return sampler, sink


def test_gpu_metrics_through_nvml(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml(gpus=2)
    with caplog.at_level(logging.DEBUG, logger="runledger_sdk"):
        sampler, sink = run_sampler(nvml)
    assert (nvml.inits, nvml.shutdowns) == (1, 1), "NVML initialised once, shut down at stop"
    assert sampler.gpu_count == 2
    assert sink.steps == list(range(len(sink.steps)))
    for sample in sink.samples:
        assert set(sample) >= CPU_KEYS
        assert sample["system/gpu0/utilization_percent"] == 40
        assert sample["system/gpu1/utilization_percent"] == 41
        assert sample["system/gpu0/memory_used_bytes"] == 10 << 30
        assert sample["system/gpu0/memory_total_bytes"] == 80 << 30
        assert sample["system/gpu0/power_watts"] == pytest.approx(123.456)
        assert sample["system/gpu0/temperature_c"] == 55
        # The failing reading drops that one metric, not the sample nor the GPU.
        assert "system/gpu1/power_watts" not in sample
        assert {f"system/gpu1/{f}" for f in GPU_FIELDS if f != "power_watts"} <= set(sample)
        assert not any(key.startswith("system/gpu2") for key in sample)
    # Said once at debug level, not per sample, and never as a warning.
    dropped = [r for r in caplog.records if "gpu1/power_watts" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelno == logging.DEBUG
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_nvml_init_failure_means_no_gpu_metrics(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml(init_error=NVMLError("Driver Not Loaded"))
    with caplog.at_level(logging.DEBUG, logger="runledger_sdk"):
        _, sink = run_sampler(nvml)
    assert nvml.shutdowns == 0  # nothing to shut down
    assert all(set(s) >= CPU_KEYS and not any("gpu" in k for k in s) for s in sink.samples)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_gpus_shuts_nvml_down_at_once() -> None:
    nvml = FakeNvml(gpus=0)
    sampler, sink = run_sampler(nvml, samples=1)
    assert (nvml.inits, nvml.shutdowns) == (1, 1)
    assert sampler.gpu_count == 0
    assert not any("gpu" in k for s in sink.samples for k in s)


def test_sample_cost_is_small() -> None:
    """One sample without GPUs costs well under a millisecond (the bound here is loose for CI)."""
    sampler, _ = run_sampler(FakeNvml(gpus=0), samples=50, interval=0.01)
    cpu = sampler.sample_cpu_seconds / sampler.samples
    wall = sampler.sample_wall_seconds / sampler.samples
    worst = sampler.max_sample_wall_seconds
    print(
        f"system metrics per sample: {cpu * 1e6:.0f} us CPU, {wall * 1e6:.0f} us wall (worst {worst * 1e6:.0f})"
    )
    assert cpu < 0.005
