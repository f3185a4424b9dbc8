"""Metrics: the keys of a run and the history of one series, downsampled in ClickHouse."""
