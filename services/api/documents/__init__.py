"""Run documents: the code state and environment a run captured (GET /runs/{run_id}/documents)."""
