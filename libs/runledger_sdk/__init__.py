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

`RUNLEDGER_MODE=offline` writes events to RUNLEDGER_OFFLINE_DIR instead; send them
later with `runledger sync DIR`. Lineage: `rl.log_input`, `rl.log_output`,
`rl.log_model`, `rl.derived_from` (`runledger_sdk.lineage`). Files: `rl.log_artifact`,
`rl.log_artifacts`, and `rl.log_model(name, path=..., model=...)`, which also logs
`system/model_size_bytes` and `system/model_parameters` (`runledger_sdk.artifacts`,
`.model_size`). Top-level runs also record
their code state (git), environment (packages, CUDA) and lint findings
(`runledger_sdk.code_state`, `.environment`, `.lint`); `rl.seed_everything(seed)`.
Metric helpers compute and log in one call: `rl.log_classification_metrics`,
`log_regression_metrics`, `log_ranking_metrics`, `log_fairness_metrics`
(`runledger_sdk.helpers`; scikit-learn through the `metrics` extra).
"""

from runledger.events.models import RunStatus
from runledger.lineage import dataset_id, model_id
from runledger_sdk import integrations
from runledger_sdk._version import __version__
from runledger_sdk.artifacts import ArtifactsUnavailable, ArtifactUploadError, LoggedArtifact
from runledger_sdk.client import init, shutdown
from runledger_sdk.config import SdkSettings
from runledger_sdk.fluent import (
    active_run,
    derived_from,
    end_run,
    flush,
    log_artifact,
    log_artifacts,
    log_input,
    log_metric,
    log_metrics,
    log_model,
    log_output,
    log_param,
    log_params,
    set_tag,
    set_tags,
    start_run,
)
from runledger_sdk.helpers import (
    ClassificationMetrics,
    log_classification_metrics,
    log_fairness_metrics,
    log_ranking_metrics,
    log_regression_metrics,
)
from runledger_sdk.lineage import Dataset, DigestTooLarge, compute_digest
from runledger_sdk.run import Run, RunEndedError
from runledger_sdk.seeds import seed_everything
from runledger_sdk.transport import Outcome, Record, Transport
from runledger_sdk.transport_memory import InMemoryTransport
from runledger_sdk.transport_offline import OfflineTransport

__all__ = [
    "ArtifactUploadError",
    "ArtifactsUnavailable",
    "ClassificationMetrics",
    "Dataset",
    "DigestTooLarge",
    "InMemoryTransport",
    "LoggedArtifact",
    "OfflineTransport",
    "Outcome",
    "Record",
    "Run",
    "RunEndedError",
    "RunStatus",
    "SdkSettings",
    "Transport",
    "__version__",
    "active_run",
    "compute_digest",
    "dataset_id",
    "derived_from",
    "end_run",
    "flush",
    "init",
    "integrations",
    "log_artifact",
    "log_artifacts",
    "log_classification_metrics",
    "log_fairness_metrics",
    "log_input",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_output",
    "log_param",
    "log_params",
    "log_ranking_metrics",
    "log_regression_metrics",
    "model_id",
    "seed_everything",
    "set_tag",
    "set_tags",
    "shutdown",
    "start_run",
]
