"""Run lint: parameter omission and metric myopia, sent as AnomalyDetected before the run ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runledger_sdk as rl
from runledger.events.codec import decode
from runledger.events.models import AnomalyDetectedPayload, EventType
from runledger_sdk import code_state, lint, run_context
from runledger_sdk.seeds import seed_everything
from tests.support.sdk import memory_sdk


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    with memory_sdk(tmp_path, lint_runs=True) as memory:
        yield memory


def run_events(transport: rl.InMemoryTransport, run_id: str) -> list[Any]:
    assert rl.flush(5)
    return [d for d in (decode(r.value) for r in transport.records) if d.envelope.run_id == run_id]


def findings_of(transport: rl.InMemoryTransport, run_id: str) -> list[AnomalyDetectedPayload]:
    found = [
        e.payload for e in run_events(transport, run_id) if e.envelope.type is EventType.ANOMALY_DETECTED
    ]
    assert all(isinstance(p, AnomalyDetectedPayload) for p in found)
    return found


def kinds(findings: list[lint.Finding]) -> list[str]:
    return [f.kind for f in findings]


def test_no_seed_and_only_train_loss() -> None:
    found = lint.lint_keys(["lr", "batch_size"], ["train/loss"])
    assert kinds(found) == [lint.PARAMETER_OMISSION, lint.METRIC_MYOPIA]
    omission, myopia = found
    assert omission.key == "seed" and omission.payload()["evidence"]["param_keys"] == ["batch_size", "lr"]
    assert myopia.key == "train/loss"
    assert myopia.evidence["reasons"] == ["single_metric", "no_validation_metric"]
    assert "train/loss" in myopia.message


def test_good_run_has_no_findings() -> None:
    assert lint.lint_keys(["seed", "lr"], ["train/loss", "val/loss", "system/cpu_percent"]) == []
    assert lint.lint_keys(["data/random_seed"], ["loss", "eval_accuracy"]) == []


def test_several_training_metrics_without_validation() -> None:
    (myopia,) = lint.lint_keys(["seed"], ["loss", "accuracy", "lr", "system/gpu0/util"])
    assert myopia.kind == lint.METRIC_MYOPIA and myopia.key == "run"
    assert myopia.evidence == {"reasons": ["no_validation_metric"], "metric_keys": ["accuracy", "loss", "lr"]}


def test_single_validation_metric_is_still_myopic() -> None:
    (myopia,) = lint.lint_keys(["seed"], ["val_loss"])
    assert myopia.evidence["reasons"] == ["single_metric"]


def test_no_metrics_is_not_myopia() -> None:
    assert lint.lint_keys(["seed"], ["system/cpu_percent"]) == []


@pytest.mark.parametrize(
    ("key", "held_out"),
    [
        ("val/loss", True),
        ("val_loss", True),
        ("valid_acc", True),
        ("validation.f1", True),
        ("valLoss", True),
        ("test_acc", True),
        ("eval/bleu", True),
        ("evaluation-score", True),
        ("train/loss", False),
        ("interval_loss", False),
        ("value", False),
        ("latest", False),
    ],
)
def test_validation_keys(key: str, held_out: bool) -> None:
    assert lint.is_validation_key(key) is held_out


def test_findings_are_sent_before_the_final_status(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        for step in range(3):
            rl.log_metric("train/loss", 1.0 / (step + 1), step=step)
    events = run_events(transport, run.run_id)
    types = [e.envelope.type for e in events]
    assert types[-3:] == [EventType.ANOMALY_DETECTED, EventType.ANOMALY_DETECTED, EventType.STATUS_CHANGED]
    payloads = [e.payload for e in events[-3:-1]]
    assert [p.kind for p in payloads] == [lint.PARAMETER_OMISSION, lint.METRIC_MYOPIA]
    assert all(p.step == 0 and 0 < p.severity <= 1 and p.evidence["message"] for p in payloads)
    assert all(e.envelope.experiment_id == run.experiment_id for e in events[-3:-1])


def test_good_run_sends_nothing(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        seed_everything(0)
        rl.log_metrics({"train/loss": 0.5, "val/loss": 0.6}, step=0)
    assert findings_of(transport, run.run_id) == []


def test_failed_and_nested_runs_are_not_linted(transport: rl.InMemoryTransport) -> None:
    with pytest.raises(RuntimeError), rl.start_run() as failed:
        rl.log_metric("loss", 1.0)
        raise RuntimeError("boom")
    with rl.start_run() as parent:
        rl.log_params({"seed": 1})
        rl.log_metrics({"loss": 1.0, "val/loss": 1.0})
        with rl.start_run(nested=True) as child:
            rl.log_metric("loss", 1.0)
    assert findings_of(transport, failed.run_id) == []
    assert findings_of(transport, child.run_id) == []
    assert findings_of(transport, parent.run_id) == []


def test_lint_can_be_turned_off(tmp_path: Path) -> None:
    memory = rl.InMemoryTransport()
    rl.init(
        transport=memory,
        spool_dir=tmp_path / "spool",
        system_metrics_interval_s=0,
        capture_code_state=False,
        capture_environment=False,
        lint_runs=False,
    )
    try:
        with rl.start_run() as run:
            rl.log_metric("loss", 1.0)
        assert findings_of(memory, run.run_id) == []
    finally:
        rl.shutdown(5)


def test_a_capture_still_running_at_the_end_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of the run follows its StatusChanged, even when the capture is slow."""
    release = time.monotonic() + 1.0

    def slow_capture(*args: Any, **kwargs: Any) -> dict[str, Any]:
        time.sleep(max(0.0, release - time.monotonic()))
        return {"entry_point": "x", "args": []}

    monkeypatch.setattr(run_context, "CONTEXT_WAIT_S", 0.1)
    monkeypatch.setattr(code_state, "capture_code_state", slow_capture)
    memory = rl.InMemoryTransport()
    rl.init(
        transport=memory,
        spool_dir=tmp_path / "spool",
        system_metrics_interval_s=0,
        capture_environment=False,
        lint_runs=False,
    )
    try:
        with rl.start_run() as run:
            pass
        time.sleep(max(0.0, release - time.monotonic()) + 0.3)
        types = [e.envelope.type for e in run_events(memory, run.run_id)]
        assert types == [EventType.RUN_STARTED, EventType.STATUS_CHANGED]
    finally:
        rl.shutdown(5)
