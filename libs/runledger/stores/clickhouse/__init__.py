"""ClickHouse: table declarations, the narrow adapter interface and its two implementations."""

from runledger.stores.clickhouse.adapter import ClickHouse, open_clickhouse

__all__ = ["ClickHouse", "open_clickhouse"]
