"""SDK runs: statuses, the active-run stack, nesting and client-side validation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import runledger_sdk as rl
from runledger.events.codec import decode
from runledger.events.models import EventType, RunStatus


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    memory = rl.InMemoryTransport()
    rl.init(transport=memory, spool_dir=tmp_path / "spool", batch_interval_ms=20)
    yield memory
    rl.shutdown(5)


def final_status(transport: rl.InMemoryTransport, run_id: str) -> tuple[str, int | None]:
    assert rl.flush(5)
    events = [decode(r.value) for r in transport.records]
    # By type, not by bytes: the code-state event's diff may quote any text.
    changes = [
        e for e in events if e.envelope.type is EventType.STATUS_CHANGED and e.envelope.run_id == run_id
    ]
    assert len(changes) == 1, "a run ends exactly once"
    payload = changes[0].payload
    return payload.status.value, payload.end_time


def test_normal_exit_finishes(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        assert rl.active_run() is run
    assert run.status is RunStatus.FINISHED and run.ended
    status, end_time = final_status(transport, run.run_id)
    assert status == "FINISHED"
    assert end_time is not None and end_time >= run.start_time
    assert rl.active_run() is None


def test_exception_fails_and_propagates(transport: rl.InMemoryTransport) -> None:
    with pytest.raises(ZeroDivisionError), rl.start_run() as run:
        rl.log_metric("x", 1.0)
        _ = 1 / 0
    assert final_status(transport, run.run_id)[0] == "FAILED"


def test_keyboard_interrupt_kills_and_reraises(transport: rl.InMemoryTransport) -> None:
    with pytest.raises(KeyboardInterrupt), rl.start_run() as run:
        raise KeyboardInterrupt
    assert final_status(transport, run.run_id)[0] == "KILLED"


def test_sys_exit_zero_finishes_nonzero_fails(transport: rl.InMemoryTransport) -> None:
    with pytest.raises(SystemExit), rl.start_run() as ok:
        raise SystemExit(0)
    with pytest.raises(SystemExit), rl.start_run() as bad:
        raise SystemExit(2)
    assert final_status(transport, ok.run_id)[0] == "FINISHED"
    assert final_status(transport, bad.run_id)[0] == "FAILED"


def test_without_with_and_explicit_status(transport: rl.InMemoryTransport) -> None:
    run = rl.start_run()
    rl.log_metric("x", 1.0)
    rl.end_run("killed")
    rl.end_run()  # no active run any more: nothing happens
    run.end_run()  # already ended: nothing happens
    assert final_status(transport, run.run_id)[0] == "KILLED"
    with pytest.raises(ValueError, match="FINISHED, FAILED or KILLED"):
        rl.start_run().end_run("RUNNING")
    rl.end_run()


def test_logging_to_an_ended_run_raises(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        pass
    with pytest.raises(rl.RunEndedError):
        run.log_metric("x", 1.0)
    with pytest.raises(rl.RunEndedError):
        run.log_params({"a": 1})


def test_nested_runs_get_parent_ids(transport: rl.InMemoryTransport) -> None:
    with rl.start_run(experiment="nest") as outer:
        with rl.start_run(nested=True) as middle:
            with rl.start_run(nested=True) as inner:
                assert rl.active_run() is inner
            assert rl.active_run() is middle
        sibling = rl.start_run(parent=middle.run_id)
        assert rl.active_run() is sibling
        sibling.end_run()
        explicit = rl.start_run(parent=outer)
        explicit.end_run()
        assert rl.active_run() is outer
    rl.flush(5)
    started = {
        d.envelope.run_id: d
        for d in (decode(r.value) for r in transport.records)
        if d.envelope.type is EventType.RUN_STARTED
    }
    assert started[outer.run_id].payload.parent_run_id is None
    assert started[middle.run_id].payload.parent_run_id == outer.run_id
    assert started[inner.run_id].payload.parent_run_id == middle.run_id
    assert started[sibling.run_id].payload.parent_run_id == middle.run_id
    assert started[explicit.run_id].payload.parent_run_id == outer.run_id
    assert {d.envelope.experiment_id for d in started.values()} == {outer.experiment_id}


def test_second_top_level_run_needs_nested(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        with pytest.raises(ValueError, match="already active"):
            rl.start_run()
        assert rl.active_run() is run


def test_nested_without_active_run_is_top_level(transport: rl.InMemoryTransport) -> None:
    with rl.start_run(nested=True) as run:
        assert run.parent_run_id is None


def test_module_functions_autostart_a_run(transport: rl.InMemoryTransport) -> None:
    rl.log_metric("x", 1.0)
    run = rl.active_run()
    assert run is not None and not run.ended
    rl.end_run()
    assert final_status(transport, run.run_id)[0] == "FINISHED"


def test_thread_without_run_logs_to_latest_run(transport: rl.InMemoryTransport) -> None:
    seen: list[rl.Run | None] = []
    with rl.start_run() as run:
        worker = threading.Thread(target=lambda: seen.append(rl.active_run()))
        worker.start()
        worker.join()
        # A thread may also have runs of its own, independent of this one.
        own: list[str] = []

        def sweep_trial() -> None:
            with rl.start_run() as trial:
                own.append(trial.run_id)

        t = threading.Thread(target=sweep_trial)
        t.start()
        t.join()
    assert seen == [run]
    assert own and own[0] != run.run_id


def test_run_id_and_name_given(transport: rl.InMemoryTransport) -> None:
    with rl.start_run(run_id="job-42.rank0", name="resumed") as run:
        assert run.run_id == "job-42.rank0" and run.name == "resumed"
    with pytest.raises(ValueError, match="run_id"):
        rl.start_run(run_id="has space")


@pytest.mark.parametrize(
    "key",
    ["", "a" * 251, "bad$char", "/absolute", "a/../b", "semi;colon", 42],
)
def test_invalid_keys_fail_fast(transport: rl.InMemoryTransport, key: object) -> None:
    with rl.start_run() as run:
        with pytest.raises(ValueError):
            run.log_metric(key, 1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            run.log_metrics({key: 1.0})  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            run.log_param(key, 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            run.set_tag(key, "v")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rl.start_run(tags={key: "v"})  # type: ignore[dict-item]
    assert rl.active_run() is None


def test_valid_keys_pass(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        for key in ["loss", "train/loss", "eval.acc@1".replace("@", "_"), "a-b c:d", "x" * 250]:
            run.log_metric(key, 1.0)
            run.log_param(key, 1)
            run.set_tag(key, 1)


def test_value_length_limits(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        run.log_param("ok", "x" * 6000)
        with pytest.raises(ValueError, match="6000"):
            run.log_param("long", "x" * 6001)
        run.set_tag("ok", "x" * 8000)
        with pytest.raises(ValueError, match="8000"):
            run.set_tag("long", "x" * 8001)
    with pytest.raises(ValueError):
        rl.start_run(experiment="")


def test_shutdown_ends_open_runs(tmp_path: Path) -> None:
    memory = rl.InMemoryTransport()
    rl.init(transport=memory, spool_dir=tmp_path / "spool")
    run = rl.start_run()
    run.log_metric("x", 1.0)
    assert rl.shutdown(5)
    assert run.ended and run.status is RunStatus.FINISHED
    assert sum(decode(r.value).envelope.type is EventType.STATUS_CHANGED for r in memory.records) == 1
