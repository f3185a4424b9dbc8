"""RunLedger client SDK: `import runledger_sdk as rl`.

    with rl.start_run(experiment="mnist", tags={"team": "vision"}) as run:
        rl.log_params({"lr": 1e-3, "batch": 64})
        for step in range(1000):
            rl.log_metrics({"loss": loss, "acc": acc}, step=step)

Events are batched in a background thread and sent to Kafka (or the RunLedger API over
HTTP); if neither is reachable they wait in an on-disk spool. Configuration:
`runledger_sdk.config` (RUNLEDGER_* environment variables) or `rl.init(...)`.

While a top-level run is active, CPU, memory, disk, network and (with the `gpu` extra)
GPU use are sampled in the background as `system/*` metrics of that run every
RUNLEDGER_SYSTEM_METRICS_INTERVAL_S seconds (`runledger_sdk.system_metrics`).
"""

from runledger.events.models import RunStatus
from runledger_sdk._version import __version__
from runledger_sdk.client import init, shutdown
from runledger_sdk.config import SdkSettings
from runledger_sdk.fluent import (
    active_run,
    end_run,
    flush,
    log_metric,
    log_metrics,
    log_param,
    log_params,
    set_tag,
    set_tags,
    start_run,
)
from runledger_sdk.run import Run, RunEndedError
from runledger_sdk.transport import Outcome, Record, Transport
from runledger_sdk.transport_memory import InMemoryTransport

__all__ = [
    "InMemoryTransport",
    "Outcome",
    "Record",
    "Run",
    "RunEndedError",
    "RunStatus",
    "SdkSettings",
    "Transport",
    "__version__",
    "active_run",
    "end_run",
    "flush",
    "init",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "set_tag",
    "set_tags",
    "shutdown",
    "start_run",
]
