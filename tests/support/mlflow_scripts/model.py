"""mlflow.sklearn.log_model of a small model, found again as an MLflow 3 logged model
(get_logged_model, search_logged_models) and loaded back through runs:/<id>/model and
models:/<model_id>."""

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
            mlflow.log_param("C", "1.0")
            mlflow.log_metric("acc", 0.75, step=0)  # linked to the model logged at step 0
            # Explicit requirements: skips the client's (slow, server-independent) inference subprocess.
            info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        out["run_id"] = run.info.run_id
        out["model_uri"] = info.model_uri
        out["model_id"] = info.model_id
        out["experiment_id"] = run.info.experiment_id
        out["expected"] = model.predict_proba(features).tolist()
    run_id = str(report.data["log_model"].get("run_id", ""))
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
        fetched = MlflowClient().get_run(run_id)
        out["status"] = fetched.info.status
        out["outputs"] = [m.model_id for m in fetched.outputs.model_outputs] if fetched.outputs else []
    model_id = str(report.data["log_model"].get("model_id", ""))
    experiment_id = str(report.data["log_model"].get("experiment_id", ""))
    with report.step("get_logged_model") as out:
        logged = mlflow.get_logged_model(model_id)
        out["name"] = logged.name
        out["status"] = str(logged.status)
        out["source_run_id"] = logged.source_run_id
        out["params"] = logged.params
        out["metrics"] = [[m.key, m.value, m.step, m.run_id] for m in logged.metrics or []]
        out["artifact_location"] = logged.artifact_location
    with report.step("search_logged_models") as out:
        found = mlflow.search_logged_models(
            experiment_ids=[experiment_id], filter_string="name = 'model'", output_format="list"
        )
        out["ids"] = [m.model_id for m in found]
        by_metric = mlflow.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string="metrics.acc > 0.5 AND params.C = '1.0'",
            output_format="list",
        )
        out["by_metric"] = [m.model_id for m in by_metric]
        out["none"] = len(
            mlflow.search_logged_models(
                experiment_ids=[experiment_id], filter_string="metrics.acc > 0.9", output_format="list"
            )
        )
        frame = mlflow.search_logged_models(experiment_ids=[experiment_id])
        out["frame_rows"] = len(frame)
    with report.step("load_models_uri") as out:
        by_id = mlflow.sklearn.load_model(f"models:/{model_id}")
        out["predicted"] = by_id.predict_proba(features).tolist()
    report.write()


if __name__ == "__main__":
    main()
