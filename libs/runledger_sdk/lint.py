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

Not checked yet: artifact bloat (the same large file logged by many runs), which needs the
artifact store.

Only what this process logged is known here: a run that several processes write to (shared
`run_id`) is judged on this process's share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runledger.events.models import EventType

if TYPE_CHECKING:
    from runledger_sdk.client import Client
    from runledger_sdk.run import Run

PARAMETER_OMISSION = "lint.parameter_omission"
METRIC_MYOPIA = "lint.metric_myopia"
SYSTEM_PREFIX = "system/"
MAX_KEYS_IN_EVIDENCE = 50

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


def lint_run(run: Run) -> list[Finding]:
    """The findings for what this process logged to `run`."""
    return lint_keys(run.param_keys, run.metric_keys)


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
