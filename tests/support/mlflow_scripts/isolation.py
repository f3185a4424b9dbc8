"""Tenancy through the MLflow API: another tenant's key, a viewer, bad and missing credentials.

The credentials switch between phases through the environment, which the client reads per request."""

from __future__ import annotations

import os
import tempfile

import mlflow
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests.support.mlflow_scripts.common import Report, error_code

CREDENTIAL_VARS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def use(credentials: dict[str, str]) -> None:
    for var in CREDENTIAL_VARS:
        os.environ.pop(var, None)
    os.environ.update(credentials)


def main() -> None:
    report = Report()
    args = report.args
    who: dict[str, dict[str, str]] = args["identities"]
    exp, run_ids, name = args["experiment_id"], args["run_ids"], args["experiment"]
    client = MlflowClient()

    use(who["other"])
    with report.step("other_tenant") as out:
        out["search"] = [r.info.run_id for r in client.search_runs([exp], run_view_type=ViewType.ALL)]
        everywhere = mlflow.search_runs(search_all_experiments=True, output_format="list")
        out["search_all"] = [r.info.run_id for r in everywhere]
        out["get_run"] = {run_id: error_code(lambda r=run_id: client.get_run(r)) for run_id in run_ids}
        out["get_experiment"] = error_code(lambda: client.get_experiment(exp))
        out["by_name"] = client.get_experiment_by_name(name) is not None
        out["log_metric"] = error_code(lambda: client.log_metric(run_ids[0], "intruder", 1.0))
        out["set_tag"] = error_code(lambda: client.set_tag(run_ids[0], "team", "intruder"))
        out["delete_run"] = error_code(lambda: client.delete_run(run_ids[0]))
        out["list_artifacts"] = error_code(lambda: client.list_artifacts(run_ids[0]))
        dst = tempfile.mkdtemp(prefix="mlflow-intruder-")
        out["download"] = error_code(lambda: client.download_artifacts(run_ids[0], "notes.txt", dst))
        out["default"] = client.get_experiment("0").name
    with report.step("other_tenant_same_name") as out:
        own = client.create_experiment(name)  # names are per tenant
        out["experiment_id"] = own
        out["run_id"] = client.create_run(own).info.run_id

    use(who["viewer"])
    with report.step("viewer") as out:
        out["search"] = sorted(r.info.run_id for r in client.search_runs([exp], run_view_type=ViewType.ALL))
        out["create_run"] = error_code(lambda: client.create_run(exp))
        out["log_metric"] = error_code(lambda: client.log_metric(run_ids[0], "viewer", 1.0))

    use(who["admin"])
    with report.step("admin") as out:
        intruder = report.data["other_tenant_same_name"].get("run_id", "")
        out["sees_other_run"] = error_code(lambda: client.get_run(intruder))
        run = client.get_run(run_ids[0])
        out["metric_keys"] = sorted(run.data.metrics)
        out["team"] = run.data.tags.get("team")
        out["lifecycle_stage"] = run.info.lifecycle_stage
        out["search"] = sorted(r.info.run_id for r in client.search_runs([exp], run_view_type=ViewType.ALL))

    with report.step("bad_credentials") as out:
        use(who["wrong"])
        out["wrong_secret"] = error_code(lambda: client.search_experiments())
        use({"MLFLOW_TRACKING_TOKEN": "not-a-key"})
        out["garbage_token"] = error_code(lambda: client.get_run(run_ids[0]))
        use({})
        out["none"] = error_code(lambda: client.get_run(run_ids[0]))
    report.write()


if __name__ == "__main__":
    main()
