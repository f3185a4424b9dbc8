"""What runs cost: training time, peak memory, CPU and GPU utilisation, GPU-hours, model size.

Read from the system metrics the SDK samples (`runledger_sdk.system_metrics`), summarised
per run over all their points (SeriesStat: min, max, mean, count):

- training_time_s: end_time - start_time of a finished run; for a run still going (no
  end_time), the largest `system/wall_time_s` sample. `training_time_source` says which.
- peak_memory_bytes: max of `system/process_rss_bytes`.
- cpu_percent_mean / cpu_percent_peak: mean and max of `system/cpu_percent` (100 = one core).
- gpu_count: GPUs with samples of `system/gpu{i}/utilization_percent` or `.../memory_used_bytes`.
- gpu_utilization_mean: mean over those GPUs of each GPU's mean utilisation (percent);
  gpu_utilization_peak: the largest sample of any GPU.
- gpu_memory_peak_bytes: the largest `system/gpu{i}/memory_used_bytes` of any GPU.
- gpu_power_mean_watts: the sum over GPUs of each GPU's mean power draw.
- gpu_hours: gpu_count x training_time_s / 3600 (GPUs held for the run's duration).
- model_size_bytes: the run's latest `system/model_size_bytes` (the SDK's `log_model` logs one
  point per logged model), else what the API found (bytes of the run's model artifacts);
  `model_size_source` says which. model_parameters: latest `system/model_parameters`.

A group's row holds the mean of its runs' values (each field over the runs that have it),
except gpu_hours and training_time_total_s, which are sums.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runledger.compare.model import RunData, SeriesStat, clean
from runledger.compare.performance import Entity

CPU = "system/cpu_percent"
RSS = "system/process_rss_bytes"
WALL = "system/wall_time_s"
MODEL_SIZE = "system/model_size_bytes"
MODEL_PARAMETERS = "system/model_parameters"
_GPU = re.compile(r"^system/gpu(\d+)/(utilization_percent|memory_used_bytes|power_watts)\Z")

FIELDS = (
    "training_time_s",
    "peak_memory_bytes",
    "cpu_percent_mean",
    "cpu_percent_peak",
    "gpu_count",
    "gpu_utilization_mean",
    "gpu_utilization_peak",
    "gpu_memory_peak_bytes",
    "gpu_power_mean_watts",
    "gpu_hours",
    "model_size_bytes",
    "model_parameters",
)


def run_resources(run: RunData) -> dict[str, Any]:
    """The resources row of one run."""
    series: Mapping[str, SeriesStat] = run.series
    row: dict[str, Any] = {"run_id": run.run_id}
    if run.end_time is not None and run.start_time is not None and run.end_time >= run.start_time:
        row["training_time_s"] = (run.end_time - run.start_time) / 1000.0
        row["training_time_source"] = "end_time - start_time"
    elif WALL in series:
        row["training_time_s"] = clean(series[WALL].maximum)
        row["training_time_source"] = WALL
    else:
        row["training_time_s"] = None
        row["training_time_source"] = None
    row["peak_memory_bytes"] = clean(series[RSS].maximum) if RSS in series else None
    row["cpu_percent_mean"] = clean(series[CPU].mean) if CPU in series else None
    row["cpu_percent_peak"] = clean(series[CPU].maximum) if CPU in series else None
    gpus: dict[int, dict[str, SeriesStat]] = {}
    for key, stat in series.items():
        match = _GPU.match(key)
        if match and stat.count > 0:
            gpus.setdefault(int(match.group(1)), {})[match.group(2)] = stat
    util = [g["utilization_percent"] for g in gpus.values() if "utilization_percent" in g]
    memory = [g["memory_used_bytes"] for g in gpus.values() if "memory_used_bytes" in g]
    power = [g["power_watts"] for g in gpus.values() if "power_watts" in g]
    row["gpu_count"] = len(gpus)
    row["gpu_utilization_mean"] = clean(float(np.mean([s.mean for s in util]))) if util else None
    row["gpu_utilization_peak"] = clean(max(s.maximum for s in util)) if util else None
    row["gpu_memory_peak_bytes"] = clean(max(s.maximum for s in memory)) if memory else None
    row["gpu_power_mean_watts"] = clean(float(sum(s.mean for s in power))) if power else None
    hours = row["training_time_s"]
    row["gpu_hours"] = len(gpus) * hours / 3600.0 if hours is not None else None
    logged_size = clean(run.metrics.get(MODEL_SIZE))
    if logged_size is not None:
        row["model_size_bytes"], row["model_size_source"] = logged_size, MODEL_SIZE
    elif run.model_size_bytes is not None:
        row["model_size_bytes"], row["model_size_source"] = run.model_size_bytes, "artifacts"
    else:
        row["model_size_bytes"] = row["model_size_source"] = None
    row["model_parameters"] = clean(run.metrics.get(MODEL_PARAMETERS))
    row["gpus"] = [
        {
            "index": i,
            **{f"{name}_mean": clean(s.mean) for name, s in sorted(g.items())},
            **{f"{name}_peak": clean(s.maximum) for name, s in sorted(g.items())},
        }
        for i, g in sorted(gpus.items())
    ]
    return row


def resources(entities: Sequence[Entity], runs: Mapping[str, RunData]) -> dict[str, Any]:
    """The resources section: a row per entity (a group's: means, GPU-hours summed) and per run."""
    per_run = {r: run_resources(runs[r]) for e in entities for r in e.run_ids if r in runs}
    rows: list[dict[str, Any]] = []
    for entity in entities:
        row: dict[str, Any]
        members = [per_run[r] for r in entity.run_ids if r in per_run]
        if entity.kind == "run":
            row = dict(members[0]) if members else {"run_id": entity.run_ids[0]}
            row.pop("run_id", None)
        else:
            row = {}
            for name in FIELDS:
                values = [m[name] for m in members if m.get(name) is not None]
                if name == "gpu_hours":
                    row[name] = float(sum(values)) if values else None
                else:
                    row[name] = float(np.mean(values)) if values else None
            times = [m["training_time_s"] for m in members if m.get("training_time_s") is not None]
            row["training_time_total_s"] = float(sum(times)) if times else None
            row["runs"] = [m["run_id"] for m in members]
        rows.append({"entity": entity.name, "kind": entity.kind, **row})
    return {"rows": rows, "runs": list(per_run.values())}
