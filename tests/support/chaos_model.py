"""The chaos workload, derived from a seed: who logs which series, their values, the planted anomalies.

Writers (tests/support/chaos_writer.py) and the verifier (tests/support/chaos_verify.py) both
compute the series from here, so a store can be checked point by point without shipping the
points around: a writer only records, durably, up to which chunk the SDK had its events
acknowledged.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

EXPERIMENT = "chaos"
TENANT = "default"
# Neutral names (no loss/accuracy word): only non_finite, spike and level_shift can fire, and
# the series below give none of those except where planted.
KEY_PREFIX = "chaos/m"
NAMESPACE = uuid.UUID("3f6c1f9e-6a43-4c55-9c5e-0d0c4b1a7c21")
# How far the planted anomalies stay from the ends of a series: the detectors need a history
# (MIN_HISTORY = 25) before a spike can be seen, and the last point must stay finite so that
# latest_metrics holds an ordinary value.
_MARGIN = 200


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos trial: the workload and the storm."""

    seed: int = 1
    writers: int = 4
    runs_per_writer: int = 4
    keys: int = 4
    steps: int = 16_000  # per series
    chunk_steps: int = 250  # steps per acknowledged chunk
    chunk_interval_s: float = 4.0  # a writer logs one chunk this often (a stream, not a burst)
    kills: int = 24  # SIGKILLs of projector / analysis / API in all
    broker_restarts: int = 1
    broker_rotations: int = 2  # planned replacements of the broker (embedded/rotation.py)
    postgres_restarts: int = 1
    downtime_s: tuple[float, float] = (0.3, 4.0)  # how long a killed service stays dead
    overlap_share: float = 0.35  # share of kills aimed while another service is down

    @property
    def runs(self) -> int:
        """Runs in all."""
        return self.writers * self.runs_per_writer

    @property
    def chunks(self) -> int:
        """Chunks each writer logs."""
        return -(-self.steps // self.chunk_steps)

    @property
    def points(self) -> int:
        """Metric points the writers log in all."""
        return self.runs * self.keys * self.steps

    @property
    def stream_s(self) -> float:
        """About how long the writers log."""
        return self.chunks * self.chunk_interval_s

    def key_names(self) -> list[str]:
        """The metric keys every run logs."""
        return [f"{KEY_PREFIX}{k}" for k in range(self.keys)]

    def run_id(self, writer: int, run: int) -> str:
        """The id of a writer's run (stable for a seed)."""
        return uuid.uuid5(NAMESPACE, f"{self.seed}/{writer}/{run}").hex

    def to_json(self) -> str:
        """The config as JSON (handed to writer processes)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChaosConfig:
        """The config from `to_json`."""
        data: dict[str, Any] = json.loads(text)
        data["downtime_s"] = tuple(data["downtime_s"])
        return cls(**data)


@dataclass(frozen=True)
class Planted:
    """An anomaly planted in one series: the finding the analysis must report once."""

    run_id: str
    key: str
    kind: str  # "non_finite" or "spike"
    step: int


def planted(config: ChaosConfig, writer: int, run: int) -> list[Planted]:
    """The anomalies of one run: a NaN in key 0 and a spike in key 1 (when the run has it)."""
    rng = np.random.default_rng([config.seed, writer, run, 7])
    run_id = config.run_id(writer, run)
    lo, hi = min(_MARGIN, config.steps // 4), max(config.steps - _MARGIN, config.steps * 3 // 4)
    out = [Planted(run_id, f"{KEY_PREFIX}0", "non_finite", int(rng.integers(lo, hi)))]
    if config.keys > 1:
        out.append(Planted(run_id, f"{KEY_PREFIX}1", "spike", int(rng.integers(lo, hi))))
    return out


def series(config: ChaosConfig, writer: int, run: int, key: int) -> npt.NDArray[np.float64]:
    """Every value of one series, step 0..steps-1 (the writer logs value[i] at step i).

    A slow linear trend plus bounded (uniform) noise: no tail that a spike detector could
    take for a spike, no plateau, no level shift; then the planted anomalies.
    """
    rng = np.random.default_rng([config.seed, writer, run, key])
    steps = np.arange(config.steps, dtype=np.float64)
    values = 10.0 + key - steps * 1e-4 + rng.uniform(-0.05, 0.05, config.steps)
    for p in planted(config, writer, run):
        if p.key == f"{KEY_PREFIX}{key}":
            values[p.step] = float("nan") if p.kind == "non_finite" else values[p.step] + 25.0
    return values


_U64 = (1 << 64) - 1


def value_bits(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint64]:
    """The IEEE-754 bits of each value (what `reinterpretAsUInt64(value)` gives in ClickHouse)."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)


def checksum(values: npt.NDArray[np.float64], first_step: int = 0) -> int:
    """sum((bits(value) * (step + 1))) over the points, exact (ClickHouse: UInt128 arithmetic)."""
    bits = value_bits(values)
    total = 0
    for i, b in enumerate(bits.tolist()):
        total += b * (first_step + i + 1)
    return total


def bits_of(value: float) -> int:
    """The IEEE-754 bits of one float."""
    out: int = struct.unpack("<Q", struct.pack("<d", value))[0]
    return out & _U64
