"""The one interface RunLedger code uses to talk to ClickHouse.

Two implementations share every line of SQL: chdb (the engine in-process, embedded
mode) and clickhouse-connect (a server or cluster, distributed mode).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa

from runledger.stores.clickhouse.tables import ALL_TABLES, ALL_VIEWS, Table

DATABASE = "runledger"


class ClickHouse(ABC):
    """Insert Arrow, query to Arrow, run DDL. Thread-safe; calls block."""

    database = DATABASE

    @abstractmethod
    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, DELETE, ...)."""

    @abstractmethod
    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> None:
        """Insert an Arrow table by column name; a repeated dedup_token makes the insert a no-op."""

    @abstractmethod
    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        """Run a SELECT with `{name:Type}` parameters and return an Arrow table."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection or engine."""

    def migrate(self) -> None:
        """Create the database and every declared table if missing; bring older ones up to date."""
        self.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        for table in ALL_TABLES:
            self.command(table.render_single_node(self.database))
            for statement in self._upgrades(table):
                self.command(statement)
        for view in ALL_VIEWS:
            self.command(view.render_single_node(self.database))

    def _upgrades(self, table: Table) -> list[str]:
        """ALTERs for a table an older version created (columns added since, a new TTL).

        Only for MergeTree tables: a cluster's Distributed tables come from
        deploy/clickhouse/cluster.sql, which its operator upgrades ON CLUSTER.
        """
        found = self.query_arrow(
            "SELECT engine, create_table_query FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": self.database, "t": table.name},
        ).to_pylist()
        if not found or not str(found[0]["engine"]).endswith("MergeTree"):
            return []
        columns = (
            self.query_arrow(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": self.database, "t": table.name},
            )
            .column("name")
            .to_pylist()
        )
        create = str(found[0]["create_table_query"])
        match = re.search(r"\bTTL (.*?)(?: SETTINGS |$)", create, re.DOTALL)
        return table.render_upgrade(
            self.database,
            [str(c) for c in columns],
            match.group(1) if match else "",
            self._unmaterialized(table, columns),
            _table_settings(create),
        )

    def _unmaterialized(self, table: Table, columns: list[str]) -> list[str]:
        """Existing columns with a non-constant DEFAULT that some active part does not store."""
        wanted = [c.name for c in table.columns if c.materialize and c.name in columns]
        if not wanted:
            return []
        params = {"db": self.database, "t": table.name}
        parts = (
            self.query_arrow(
                "SELECT count() AS n FROM system.parts WHERE database = {db:String} AND table = {t:String} AND active",
                params,
            )
            .column("n")[0]
            .as_py()
        )
        stored = self.query_arrow(
            "SELECT column, uniqExact(name) AS n FROM system.parts_columns"
            " WHERE database = {db:String} AND table = {t:String} AND active GROUP BY column",
            params,
        ).to_pylist()
        per_column = {str(r["column"]): int(r["n"]) for r in stored}
        return [name for name in wanted if per_column.get(name, 0) < int(parts)]

    def table(self, name: str) -> str:
        """Fully qualified table name."""
        return f"{self.database}.{name}"


def _table_settings(create_table_query: str) -> dict[str, str]:
    """The SETTINGS clause of a table's CREATE statement (as system.tables shows it), by name."""
    match = re.search(r".*\bSETTINGS (.*)$", create_table_query, re.DOTALL)  # the last one
    if match is None:
        return {}
    pairs = (item.split("=", 1) for item in match.group(1).split(",") if "=" in item)
    return {name.strip(): value.strip().strip("'") for name, value in pairs}


def _insert_settings(dedup_token: str | None) -> dict[str, str | int]:
    # Blocks arrive already deduplicated (the projector guarantees it), so the
    # replacing merge on insert is skipped: ~30% of a metric insert's cost.
    settings: dict[str, str | int] = {"optimize_on_insert": 0}
    if dedup_token is not None:
        if "'" in dedup_token or "\\" in dedup_token:
            raise ValueError("dedup token must not contain quotes or backslashes")
        settings["insert_deduplication_token"] = dedup_token
    return settings


def _insert_prefix(database: str, table: str, data: pa.Table, dedup_token: str | None) -> str:
    cols = ", ".join(f"`{c}`" for c in data.column_names)
    settings = ", ".join(
        f"{k} = '{v}'" if isinstance(v, str) else f"{k} = {v}"
        for k, v in _insert_settings(dedup_token).items()
    )
    return f"INSERT INTO {database}.{table} ({cols}) SETTINGS {settings}"


class ChdbClickHouse(ClickHouse):
    """The ClickHouse engine in this process through chdb (one process per data path)."""

    def __init__(self, path: Path) -> None:
        from chdb import session  # imported here: the distributed mode never loads chdb

        path.mkdir(parents=True, exist_ok=True)
        self._session = session.Session(str(path))
        self._closed = False
        # One query at a time, entered under a Python lock. chdb runs queries one at a time
        # anyway, but a thread waiting on chdb's own lock holds the GIL, while the query
        # inside may need the GIL (Python() reads an Arrow table, results become Python
        # objects): a projector insert and an API read deadlocked the whole process that way.
        # Waiting on a threading.Lock releases the GIL.
        self._lock = threading.Lock()

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._session.query(sql, "CSV", params=params or None)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> None:
        if data.num_rows == 0:
            return
        # chdb's Python() table function reads the Arrow table by variable name
        # from this frame, without copying it through IPC (measured ~2x faster).
        arrow_data = data  # noqa: F841 - referenced by name in the SQL below
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        sql = (
            f"{_insert_prefix(self.database, table, data, dedup_token)} SELECT {cols} FROM Python(arrow_data)"
        )
        with self._lock:
            self._session.query(sql)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        with self._lock:
            result = self._session.query(sql, "ArrowTable", params=params or None)
        assert isinstance(result, pa.Table)
        return result

    def close(self) -> None:
        with self._lock:
            if not self._closed:  # idempotent: the app's shutdown and the process exit both close
                self._closed = True
                self._session.close()


class ServerClickHouse(ClickHouse):
    """A ClickHouse server or cluster over HTTP through clickhouse-connect."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect  # imported here: the embedded mode never needs it

        self._client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
        configured: str | None = self._client.database
        self.database = configured if configured and configured != "default" else DATABASE

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._client.command(sql, parameters=params)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> None:
        if data.num_rows == 0:
            return
        self._client.insert_arrow(table, data, database=self.database, settings=_insert_settings(dedup_token))

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        result = self._client.query_arrow(sql, parameters=params, use_strings=True)
        assert isinstance(result, pa.Table)
        return result

    def close(self) -> None:
        self._client.close()


def open_clickhouse(url: str, chdb_path: Path) -> ClickHouse:
    """The server adapter when a URL is configured, else chdb under chdb_path; tables migrated."""
    store: ClickHouse = ServerClickHouse(url) if url else ChdbClickHouse(chdb_path)
    store.migrate()
    return store
