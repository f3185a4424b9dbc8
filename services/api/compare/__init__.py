"""POST /api/v1/compare and GET /api/v1/experiments/{id}/hyperparameter-importance."""
