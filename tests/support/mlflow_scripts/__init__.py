"""Scripts that drive the unmodified mlflow client, each run in its own subprocess by the e2e tests."""
