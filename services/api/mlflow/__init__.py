"""The MLflow tracking REST API (/api/2.0/mlflow/...): a translation layer over RunLedger's
experiments, runs and metrics, so the unmodified `mlflow` client works against RunLedger."""
