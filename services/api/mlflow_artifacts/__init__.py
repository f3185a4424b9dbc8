"""MLflow's artifact proxy (mlflow-artifacts:/ URIs), over RunLedger's artifact store."""
