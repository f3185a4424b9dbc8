"""System metrics of the training process, sampled in the background while a run is active.

The client starts one `SystemSampler` per process, for the first top-level run (nested
runs share their parent's; a second top-level run started meanwhile in another thread
gets none), and stops it when that run ends. Every `RUNLEDGER_SYSTEM_METRICS_INTERVAL_S`
seconds (default 10; 0 disables) a daemon thread logs one sample on the run:
step = sample index (0, 1, 2, ...), timestamp = sample time. The first sample comes one
interval after the start (CPU percent needs a period to measure over), and a closing sample
when the run ends, so a run shorter than the interval has its system metrics too.

Keys (all floats):

    system/cpu_percent                 CPU used by this process since the previous sample,
                                       top-style: 100 = one core fully busy, up to
                                       100 x cores. Not normalised by the core count, so a
                                       Python loop pegging its core shows as 100 anywhere.
    system/process_rss_bytes           resident memory of this process
    system/system_memory_used_bytes    memory in use on the host (psutil's `used`)
    system/system_memory_percent       the host's memory in use, 0..100
    system/disk_read_bytes             host-wide disk bytes read since the run started
    system/disk_write_bytes            host-wide disk bytes written since the run started
    system/network_sent_bytes          host-wide network bytes sent since the run started
    system/network_recv_bytes          host-wide network bytes received since the run started
    system/wall_time_s                 seconds since the run started

and per NVIDIA GPU i, through NVML (`pip install runledger[gpu]`, module `pynvml`):

    system/gpu{i}/utilization_percent  share of the last NVML sample period a kernel ran
    system/gpu{i}/memory_used_bytes    device memory in use (all processes)
    system/gpu{i}/memory_total_bytes   device memory
    system/gpu{i}/power_watts          board power draw
    system/gpu{i}/temperature_c        core temperature

and, not sampled but logged once per `run.log_model(...)` call (runledger_sdk.model_size):

    system/model_size_bytes            bytes of the logged model's files
    system/model_parameters            parameters of the model object (torch, Keras,
                                       XGBoost, scikit-learn, numpy arrays), when known

Disk and network counters are host-wide: psutil has no per-process network counters,
and host-wide disk counters also count the I/O of data-loader worker processes. Without
NVML (no GPU, no driver, `pynvml` not installed) the GPU keys are absent, with one debug
log line. Each reading is guarded: one that fails (power not supported, a counter missing
in a container) drops that key from the sample, never the sample.

Cost: a sample without GPUs reads five /proc files through psutil, about 0.5-1 ms of
the sampler thread's CPU time once per interval (`SystemSampler.sample_cpu_seconds`); the
training thread at worst waits about that long for the GIL, and not at all while it
waits on the GPU. NVML is initialised once per sampler, in its thread, and shut down
when it stops.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import psutil

log = logging.getLogger("runledger_sdk.system_metrics")

PREFIX = "system/"
THREAD_NAME = "runledger-system-metrics"

_T = TypeVar("_T")

# The closing sample is skipped when the previous one is more recent than this.
_MIN_CLOSING_PERIOD_S = 0.1

# NVML's NVML_TEMPERATURE_GPU (the GPU core sensor): a fixed value of the C API, spelled
# out so a stand-in needs no constants.
_NVML_TEMPERATURE_GPU = 0


class MetricSink(Protocol):
    """Where samples go: a `Run` is one."""

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None:
        """Log `metrics` at `step` with `timestamp` (ms since the epoch)."""


class NvmlApi(Protocol):
    """The part of `pynvml` (package nvidia-ml-py) the sampler calls; tests pass a stand-in."""

    def nvmlInit(self) -> None:
        """Load the library and initialise NVML (raises NVMLError without a driver)."""

    def nvmlShutdown(self) -> None:
        """Release NVML."""

    def nvmlDeviceGetCount(self) -> int:
        """Number of GPUs."""

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        """The handle of GPU `index`."""

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        """An object whose `.gpu` is the utilisation in percent."""

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        """An object with `.used` and `.total` in bytes."""

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        """Power draw in milliwatts."""

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        """Temperature of `sensor` in degrees Celsius."""


def import_pynvml() -> NvmlApi | None:
    """The `pynvml` module if it is installed, else None (logged at debug level)."""
    try:
        module = importlib.import_module("pynvml")
    except ImportError:
        log.debug("system metrics: pynvml not installed (pip install runledger[gpu]); no GPU metrics")
        return None
    return cast(NvmlApi, module)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SystemSampler:
    """A daemon thread logging a sample of system metrics to `sink` every `interval_s` seconds.

    `nvml` is the NVML binding to use; None loads `pynvml` when installed; `gpu=False`
    leaves NVML alone (no GPU metrics). Everything that may be slow (NVML's init loads the
    driver) happens in the thread, so `start` returns at once. The first sample is taken
    one interval after `start`: CPU percent needs a period to measure over. `stop` has the
    thread take a closing sample, logged to `closing_sink` (default `sink`): a `Run` that is
    ending refuses `log_metrics`, so the client passes the run's own closing path.
    """

    def __init__(
        self,
        sink: MetricSink,
        interval_s: float,
        *,
        nvml: NvmlApi | None = None,
        gpu: bool = True,
        closing_sink: MetricSink | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0 (0 disables sampling: create no sampler)")
        self._sink = sink
        self._closing_sink = sink if closing_sink is None else closing_sink
        self.interval_s = interval_s
        self._nvml_given = nvml
        self._gpu = gpu
        self._nvml: NvmlApi | None = None
        self._gpu_handles: list[tuple[int, Any]] = []
        # GPUs found when the thread initialised NVML (0 before that, or without NVML).
        self.gpu_count = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self._failed: set[str] = set()  # readings that failed once: logged once, not per sample
        self._t0 = 0.0
        self._disk0: tuple[int, int] | None = None
        self._net0: tuple[int, int] | None = None
        self.samples = 0
        # What sampling costs, for the cost report (seconds, summed over the samples): CPU
        # time of this thread (what it takes from the process) and wall time (which also
        # counts waits for the GIL and, with NVML, for the driver), and the worst wall time.
        self.sample_cpu_seconds = 0.0
        self.sample_wall_seconds = 0.0
        self.max_sample_wall_seconds = 0.0

    @property
    def alive(self) -> bool:
        """Whether the sampler thread is running."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling and wait (at most `timeout` s) for the thread, which shuts NVML down.

        After it returns nothing more is logged to the sink, unless the thread was stuck in
        a reading for longer than `timeout`.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.debug("system metrics: sampler thread did not stop within %.1f s", timeout)

    # --- the thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._open()
            # Samples are due at fixed times after the start, so they do not drift by the
            # time sampling takes; after a stall (suspended process) the missed ones are skipped.
            due = self._t0
            last = self._t0
            while True:
                due += self.interval_s
                now = time.monotonic()
                if now > due:
                    due = now
                if self._stop.wait(due - now):
                    break
                last = time.monotonic()
                if not self._log_sample(self._sink):
                    return
            # A closing sample when the run ends: a run shorter than the interval still gets its
            # system metrics, and every run its final wall time and counters. Not when the last
            # sample was just taken (its CPU percent would be measured over next to no time).
            if self.samples == 0 or time.monotonic() - last >= _MIN_CLOSING_PERIOD_S:
                self._log_sample(self._closing_sink)
        except Exception:  # pragma: no cover - a bug: say so once, never take training down
            log.warning("RunLedger: system metrics sampler failed; no more samples", exc_info=True)
        finally:
            self._close_nvml()

    def _log_sample(self, sink: MetricSink) -> bool:
        """Take one sample and log it to `sink`; False when it refuses (the run ended)."""
        timestamp = _now_ms()
        started, started_cpu = time.perf_counter(), time.thread_time()
        metrics = self.sample()
        self.sample_cpu_seconds += time.thread_time() - started_cpu
        elapsed = time.perf_counter() - started
        self.sample_wall_seconds += elapsed
        self.max_sample_wall_seconds = max(self.max_sample_wall_seconds, elapsed)
        if not metrics:
            return True
        try:
            sink.log_metrics(metrics, step=self.samples, timestamp=timestamp)
        except Exception as exc:
            # The run ended (RunEndedError) or the client is closing: nothing to log to.
            log.debug("system metrics: stopping, logging failed: %s", exc)
            return False
        self.samples += 1
        return True

    def _open(self) -> None:
        """Baselines for the since-start counters, the CPU reference point, NVML."""
        self._t0 = time.monotonic()
        # The first call only starts psutil's CPU measurement period (it returns 0.0).
        self._guard("cpu_percent", self._process.cpu_percent)
        self._disk0 = self._guard("disk", self._disk_counters)
        self._net0 = self._guard("network", self._net_counters)
        self._open_nvml()

    def _open_nvml(self) -> None:
        if not self._gpu:
            return
        nvml = self._nvml_given if self._nvml_given is not None else import_pynvml()
        if nvml is None:
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError without a driver: the normal case on CPU hosts
            log.debug("system metrics: NVML unavailable (%s); no GPU metrics", exc)
            return
        self._nvml = nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            log.debug("system metrics: NVML device count failed (%s); no GPU metrics", exc)
            count = 0
        for index in range(count):
            try:
                self._gpu_handles.append((index, nvml.nvmlDeviceGetHandleByIndex(index)))
            except Exception as exc:  # e.g. a GPU lost or not visible to this process
                log.debug("system metrics: GPU %d skipped: %s", index, exc)
        self.gpu_count = len(self._gpu_handles)
        if not self._gpu_handles:
            log.debug("system metrics: NVML found no usable GPU")
            self._close_nvml()

    def _close_nvml(self) -> None:
        nvml, self._nvml = self._nvml, None
        self._gpu_handles = []
        if nvml is None:
            return
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("system metrics: NVML shutdown failed: %s", exc)

    # --- one sample -------------------------------------------------------------------------------

    def sample(self) -> dict[str, float]:
        """One reading of every metric; a reading that fails is left out (the thread's work)."""
        metrics: dict[str, float] = {}
        self._put(metrics, "cpu_percent", self._process.cpu_percent)
        self._put(metrics, "process_rss_bytes", lambda: self._process.memory_info().rss)
        memory = self._guard("system_memory", psutil.virtual_memory)
        if memory is not None:
            metrics[PREFIX + "system_memory_used_bytes"] = float(memory.used)
            metrics[PREFIX + "system_memory_percent"] = float(memory.percent)
        self._put_since_start(metrics, "disk", ("disk_read_bytes", "disk_write_bytes"), self._disk0)
        self._put_since_start(metrics, "network", ("network_sent_bytes", "network_recv_bytes"), self._net0)
        metrics[PREFIX + "wall_time_s"] = time.monotonic() - self._t0
        nvml = self._nvml
        if nvml is not None:
            for index, handle in self._gpu_handles:
                self._sample_gpu(metrics, nvml, index, handle)
        return metrics

    def _sample_gpu(self, metrics: dict[str, float], nvml: NvmlApi, index: int, handle: Any) -> None:
        gpu = f"gpu{index}/"
        self._put(
            metrics, gpu + "utilization_percent", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        )
        memory = self._guard(gpu + "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is not None:
            for field in ("used", "total"):
                self._put(metrics, f"{gpu}memory_{field}_bytes", partial(getattr, memory, field))
        self._put(metrics, gpu + "power_watts", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        self._put(
            metrics,
            gpu + "temperature_c",
            lambda: nvml.nvmlDeviceGetTemperature(handle, _NVML_TEMPERATURE_GPU),
        )

    def _put(self, metrics: dict[str, float], name: str, read: Callable[[], Any]) -> None:
        value = self._guard(name, read)
        if value is None:
            return
        try:
            metrics[PREFIX + name] = float(value)
        except (TypeError, ValueError) as exc:
            self._note_failure(name, exc)

    def _put_since_start(
        self,
        metrics: dict[str, float],
        name: str,
        keys: tuple[str, str],
        baseline: tuple[int, int] | None,
    ) -> None:
        if baseline is None:  # no counters at the start (none in this container): none now
            return
        read = self._disk_counters if name == "disk" else self._net_counters
        current = self._guard(name, read)
        if current is None:
            return
        for key, now, start in zip(keys, current, baseline, strict=True):
            # max(): a counter reset (device removed) must not show as negative traffic.
            metrics[PREFIX + key] = float(max(0, now - start))

    # nowrap=False: psutil's wrap-around bookkeeping costs a third of these calls, and the
    # kernel's counters are 64-bit (a reset shows as 0 through the max() above).

    @staticmethod
    def _disk_counters() -> tuple[int, int] | None:
        counters = psutil.disk_io_counters(nowrap=False)
        return None if counters is None else (counters.read_bytes, counters.write_bytes)

    @staticmethod
    def _net_counters() -> tuple[int, int]:
        counters = psutil.net_io_counters(nowrap=False)
        return counters.bytes_sent, counters.bytes_recv

    def _guard(self, name: str, read: Callable[[], _T]) -> _T | None:
        try:
            return read()
        except Exception as exc:
            self._note_failure(name, exc)
            return None

    def _note_failure(self, name: str, exc: BaseException) -> None:
        # Unsupported readings fail on every sample: say so once, at debug level.
        if name not in self._failed:
            self._failed.add(name)
            log.debug("system metrics: %s left out: %s", name, exc)
