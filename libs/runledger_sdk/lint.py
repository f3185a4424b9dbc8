"""Run lint: anti-patterns that make a run hard to reproduce or to compare.

When a top-level run ends FINISHED (RUNLEDGER_LINT_RUNS, default on), what this process
logged to it is checked and each problem is sent as an AnomalyDetected event of the run,
ahead of its final StatusChanged; the API lists them under
`GET /api/v1/runs/{run_id}/findings`. Runs that end FAILED or KILLED are not linted: their
data is incomplete by nature (a crash before the first evaluation is not metric myopia).

Checks (kind, severity 0..1):

- `lint.parameter_omission` (0.5): no seed among the params (a key whose last path
  segment contains "seed"): the run cannot be repeated. `rl.seed_everything(seed)` fixes it.
- `lint.metric_myopia` (0.3): the run logged a single metric, or no validation metric
  (no key with a word starting with "val", "test" or "eval", e.g. `val/loss`, `valid_acc`,
  `test_f1`, `eval.bleu`; `interval` or `value` do not count). Training curves alone cannot
  tell overfitting from progress. `system/*` metrics are not counted; a run that logged no
  metric at all is not flagged.

- `lint.artifact_bloat` (0.4): among the artifacts this process logged to the run
  (`log_artifact`, `log_artifacts`, `log_model`), one larger than
  RUNLEDGER_LINT_ARTIFACT_MAX_BYTES (default 100 MiB; reason `oversized`), or the same
  content (sha256) under several paths, e.g. one checkpoint saved as `epoch_1.pt`,
  `epoch_2.pt`, ... unchanged (reason `repeated`). One finding per run (key `artifacts`)
  whose evidence lists the oversized files (`oversized`: path, size), the repeated contents
  (`repeated`: digest, size, paths) and `wasted_bytes` (bytes sent again for repeats).
  What the SDK stores by itself under `runledger/` (diff, environment) is not judged: the
  user did not ask for it. A path logged again replaces the earlier file, so only each
  path's latest content counts.

Artifact bloat is judged within the run only: the SDK does not know what other runs log,
and the artifact store keeps identical bytes once however many runs log them (its quota
counts them once too), so content shared across runs costs no storage.

Only what this process logged is known here: a run that several processes write to (shared
`run_id`) is judged on this process's share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runledger.events.models import EventType
from runledger_sdk.artifacts import SDK_PREFIX, LoggedArtifact

if TYPE_CHECKING:
    from runledger_sdk.client import Client
    from runledger_sdk.run import Run

PARAMETER_OMISSION = "lint.parameter_omission"
METRIC_MYOPIA = "lint.metric_myopia"
ARTIFACT_BLOAT = "lint.artifact_bloat"
SYSTEM_PREFIX = "system/"
MAX_KEYS_IN_EVIDENCE = 50
DEFAULT_ARTIFACT_MAX_BYTES = 100 << 20

_WORDS = re.compile(r"[a-z0-9]+")
_VALIDATION_WORD = re.compile(r"^(?:val(?!ue)|test|eval)")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem of a run, as its AnomalyDetected payload says it."""

    kind: str
    severity: float
    key: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The AnomalyDetected payload (step 0: a finding about the whole run)."""
        return {
            "key": self.key,
            "step": 0,
            "kind": self.kind,
            "severity": self.severity,
            "evidence": {"message": self.message, **self.evidence},
        }


def is_seed_key(key: str) -> bool:
    """Whether a param key names a seed (`seed`, `random_seed`, `data/seed`, ...)."""
    return "seed" in key.rsplit("/", 1)[-1].lower()


def is_validation_key(key: str) -> bool:
    """Whether a metric key names a held-out measurement (val/valid/test/eval in a word)."""
    # camelCase counts as words too: valLoss -> val, loss.
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return any(_VALIDATION_WORD.match(word) for word in _WORDS.findall(spaced.lower()))


def _sample(keys: list[str]) -> list[str]:
    return keys[:MAX_KEYS_IN_EVIDENCE]


def lint_keys(param_keys: Iterable[str], metric_keys: Iterable[str]) -> list[Finding]:
    """The findings for a run that logged these params and metrics."""
    params = sorted(set(param_keys))
    metrics = sorted({k for k in metric_keys if not k.startswith(SYSTEM_PREFIX)})
    findings: list[Finding] = []
    if not any(is_seed_key(k) for k in params):
        findings.append(
            Finding(
                PARAMETER_OMISSION,
                0.5,
                "seed",
                "no seed was logged, so the run cannot be repeated: call rl.seed_everything(seed)"
                " or log a 'seed' param",
                {"missing": ["seed"], "param_keys": _sample(params)},
            )
        )
    if metrics:
        reasons: list[str] = []
        if len(metrics) == 1:
            reasons.append("single_metric")
        if not any(is_validation_key(k) for k in metrics):
            reasons.append("no_validation_metric")
        if reasons:
            if len(metrics) > 1:
                what = f"none of the {len(metrics)} metrics is measured on held-out data (val/test/eval)"
            elif "no_validation_metric" in reasons:
                what = (
                    f"only one metric ({metrics[0]!r}) was logged, and not on held-out data (val/test/eval)"
                )
            else:
                what = f"only one metric ({metrics[0]!r}) was logged"
            findings.append(
                Finding(
                    METRIC_MYOPIA,
                    0.3,
                    metrics[0] if len(metrics) == 1 else "run",
                    what + ": training curves alone cannot tell overfitting from progress",
                    {"reasons": reasons, "metric_keys": _sample(metrics)},
                )
            )
    return findings


def lint_artifacts(
    artifacts: Iterable[LoggedArtifact], max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES
) -> list[Finding]:
    """The artifact-bloat finding (none or one) for a run's artifacts (each path's latest)."""
    latest = {a.path: a for a in artifacts}
    user = sorted((a for a in latest.values() if not a.path.startswith(SDK_PREFIX)), key=lambda a: a.path)
    oversized = sorted((a for a in user if a.size > max_bytes), key=lambda a: (-a.size, a.path))
    by_digest: dict[str, list[LoggedArtifact]] = {}
    for a in user:
        by_digest.setdefault(a.digest, []).append(a)
    # Most bytes sent again first.
    repeated = sorted(
        (same for same in by_digest.values() if len(same) > 1),
        key=lambda same: (-same[0].size * (len(same) - 1), same[0].digest),
    )
    if not oversized and not repeated:
        return []
    wasted = sum(same[0].size * (len(same) - 1) for same in repeated)
    reasons: list[str] = []
    parts: list[str] = []
    if oversized:
        reasons.append("oversized")
        parts.append(
            f"{len(oversized)} artifact(s) larger than {_size(max_bytes)}"
            f" (largest {oversized[0].path!r}, {_size(oversized[0].size)})"
        )
    if repeated:
        reasons.append("repeated")
        copies = sum(len(same) for same in repeated)
        parts.append(
            f"{copies} artifacts are {len(repeated)} distinct content(s) logged under several paths"
            f" ({_size(wasted)} sent again)"
        )
    evidence: dict[str, Any] = {
        "reasons": reasons,
        "threshold_bytes": max_bytes,
        "oversized": [{"path": a.path, "size": a.size} for a in oversized[:MAX_KEYS_IN_EVIDENCE]],
        "repeated": [
            {"digest": same[0].digest, "size": same[0].size, "paths": _sample([a.path for a in same])}
            for same in repeated[:MAX_KEYS_IN_EVIDENCE]
        ],
        "wasted_bytes": wasted,
    }
    message = (
        "; ".join(parts) + ": log large files once (e.g. only the best checkpoint) and skip unchanged ones"
    )
    return [Finding(ARTIFACT_BLOAT, 0.4, "artifacts", message, evidence)]


def _size(n: int) -> str:
    """Bytes in a readable unit (1.5 MiB)."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def lint_run(run: Run, artifact_max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES) -> list[Finding]:
    """The findings for what this process logged to `run`."""
    findings = lint_keys(run.param_keys, run.metric_keys)
    return findings + lint_artifacts(run.logged_artifacts(), artifact_max_bytes)


def emit_findings(client: Client, run: Run, findings: Iterable[Finding]) -> None:
    """Send each finding as an AnomalyDetected event of the run (after its buffered data)."""
    for finding in findings:
        client.batcher.emit(
            run.buffer,
            EventType.ANOMALY_DETECTED,
            finding.payload(),
            key=run.buffer.run_key,
            run_id=run.run_id,
            experiment_id=run.experiment_id,
        )
