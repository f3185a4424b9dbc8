"""The embedded engine under concurrent use: writers and readers on several threads at once.

chdb serialises queries internally; a thread waiting on chdb's lock used to hold the GIL
while the running query needed it (Python() reading an Arrow table), which froze the
whole services process under MLflow-client traffic. ChdbClickHouse now enters chdb under
a Python lock; this test fails by timing out if the deadlock comes back.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from runledger.stores.clickhouse.adapter import ChdbClickHouse
from tests.integration.test_clickhouse_conformance import _points


def test_concurrent_inserts_and_reads_neither_deadlock_nor_lose_rows(tmp_path: Path) -> None:
    store = ChdbClickHouse(tmp_path / "ch")
    store.migrate()
    inserted = {"rows": 0}
    errors: list[BaseException] = []
    stop = time.monotonic() + 4.0
    lock = threading.Lock()

    def writer(index: int) -> None:
        batch = 0
        while time.monotonic() < stop:
            table = _points("t", f"run-{index}-{batch}", 500)
            store.insert_arrow("metric_points", table, f"w{index}.{batch}")
            with lock:
                inserted["rows"] += table.num_rows
            batch += 1

    def reader() -> None:
        while time.monotonic() < stop:
            store.query_arrow(f"SELECT run_id, count() FROM {store.table('metric_points')} GROUP BY run_id")

    def guarded(target: object, *args: object) -> None:
        try:
            target(*args)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(writer, i), daemon=True) for i in range(2)]
    threads += [threading.Thread(target=guarded, args=(reader,), daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "chdb calls deadlocked"
    assert not errors, errors
    count = (
        store.query_arrow(f"SELECT count() AS n FROM {store.table('metric_points')}").column("n")[0].as_py()
    )
    assert count == inserted["rows"] > 0
    store.close()
