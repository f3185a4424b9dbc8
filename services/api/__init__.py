"""The RunLedger HTTP API (FastAPI): tracking routes over the event log and the projections."""
