"""mlflow.sklearn.log_model of a small model, loaded back through runs:/<id>/model."""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from tests.support.mlflow_scripts.common import Report


def main() -> None:
    report = Report()
    features = np.array([[0.0, 1.0], [1.0, 0.5], [2.0, 0.0], [3.0, -0.5], [4.0, -1.0], [5.0, -1.5]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    model = LogisticRegression().fit(features, labels)
    with report.step("log_model") as out:
        mlflow.set_experiment(report.args["experiment"])
        with mlflow.start_run(run_name="with-model") as run:
            # Explicit requirements: skips the client's (slow, server-independent) inference subprocess.
            info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        out["run_id"] = run.info.run_id
        out["model_uri"] = info.model_uri
        out["expected"] = model.predict_proba(features).tolist()
    run_id = report.data["log_model"].get("run_id")
    with report.step("load_runs_uri") as out:
        loaded = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
        out["predicted"] = loaded.predict_proba(features).tolist()
        out["coef"] = loaded.coef_.tolist() == model.coef_.tolist()
    with report.step("load_pyfunc") as out:
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        out["predicted"] = np.asarray(pyfunc.predict(features)).tolist()
        out["expected"] = model.predict(features).tolist()
    with report.step("list_model_artifacts") as out:
        out["paths"] = sorted(f.path for f in MlflowClient().list_artifacts(run_id, "model"))
    with report.step("run_status") as out:
        out["status"] = MlflowClient().get_run(run_id).info.status
    report.write()


if __name__ == "__main__":
    main()
