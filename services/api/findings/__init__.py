"""Findings: anomalies, attributions and run lint results (GET /findings, GET /runs/{run_id}/findings)."""
