"""Tabular exports (CSV, NDJSON, Parquet, Arrow IPC), streamed: experiments, runs (wide),
metric points (long) and findings, tenant-scoped and filtered with the run search grammar."""
