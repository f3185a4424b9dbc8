"""The fluent API end to end (set_experiment, nested runs, logging, artifacts, inputs, end_run statuses),
then everything read back through MlflowClient."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.support.mlflow_scripts.common import CONFIG, Report, artifact_files


def run_view(run: Run) -> dict[str, Any]:
    info = run.info
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "lifecycle_stage": info.lifecycle_stage,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "artifact_uri": info.artifact_uri,
        "metrics": run.data.metrics,
        "params": run.data.params,
        "tags": run.data.tags,
        "datasets": [
            {
                "name": d.dataset.name,
                "digest": d.dataset.digest,
                "source_type": d.dataset.source_type,
                "source": d.dataset.source,
                "schema": d.dataset.schema,
                "profile": d.dataset.profile,
                "tags": {t.key: t.value for t in d.tags},
            }
            for d in (run.inputs.dataset_inputs if run.inputs else [])
        ],
    }


def tree(root: Path) -> dict[str, str]:
    """Every file under root: relative path → base64 of its bytes."""
    return {
        str(p.relative_to(root)): base64.b64encode(p.read_bytes()).decode()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main() -> None:
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="mlflow-fluent-"))
    for rel, content in artifact_files().items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(content)
    ids: dict[str, str] = {}
    client = MlflowClient()

    with report.step("set_experiment") as out:
        experiment = mlflow.set_experiment(report.args["experiment"])
        out["experiment_id"] = experiment.experiment_id
        out["name"] = experiment.name
        out["lifecycle_stage"] = experiment.lifecycle_stage
        again = mlflow.set_experiment(report.args["experiment"])  # exists now: get-by-name only
        out["again_id"] = again.experiment_id

    with report.step("parent_run") as out, mlflow.start_run(run_name="parent") as parent:
        ids["parent"] = out["run_id"] = parent.info.run_id
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"optimizer": "adam", "epochs": 3, "layers": [64, 32]})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.5, "f1": 0.25}, step=0)
        mlflow.log_metrics({"acc": 0.75, "f1": 0.5}, step=1)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev", "owner": "alice"})
        with report.step("log_artifacts"):
            mlflow.log_artifact(str(work / "notes.txt"))
            mlflow.log_artifact(str(work / "bin" / "blob.bin"), artifact_path="bin")
            mlflow.log_artifacts(str(work / "data"), artifact_path="data")
            mlflow.log_dict(CONFIG, "config/params.json")
        with report.step("log_input") as inp:
            frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
            dataset = mlflow.data.from_pandas(frame, source="train.csv", name="train", targets="y")
            mlflow.log_input(dataset, context="training", tags={"split": "train"})
            inp["dataset"] = dataset.to_dict()  # the entity's fields, as the server should return them
        with report.step("nested_run") as nested, mlflow.start_run(run_name="child", nested=True) as child:
            ids["child"] = nested["run_id"] = child.info.run_id
            mlflow.log_param("fold", 1)
            mlflow.log_metric("child_loss", 0.125, step=3)

    for status in ("FINISHED", "FAILED", "KILLED"):
        with report.step(f"end_run_{status}") as out:
            run = mlflow.start_run(run_name=f"end-{status.lower()}")
            ids[status] = out["run_id"] = run.info.run_id
            mlflow.log_metric("x", 1.0)
            mlflow.end_run(status=status)

    for name, run_id in ids.items():
        with report.step(f"get_run_{name}") as out:
            out.update(run_view(client.get_run(run_id)))
    if "parent" in ids:
        parent_id = ids["parent"]
        with report.step("history_loss") as out:
            history = client.get_metric_history(parent_id, "loss")
            out["points"] = [[m.step, m.value] for m in history]
        with report.step("list_artifacts") as out:
            for path in (None, "data", "data/sub", "bin", "notes.txt"):
                listed = client.list_artifacts(parent_id, path)
                out[path or ""] = sorted([f.path, f.is_dir, f.file_size] for f in listed)
        with report.step("download_artifacts") as out:
            dst = Path(tempfile.mkdtemp(prefix="mlflow-dl-"))
            local = client.download_artifacts(parent_id, "data", str(dst))
            out["data"] = tree(Path(local))
            one = client.download_artifacts(parent_id, "bin/blob.bin", str(dst))
            out["blob"] = base64.b64encode(Path(one).read_bytes()).decode()
            everything = mlflow.artifacts.download_artifacts(run_id=parent_id, dst_path=str(dst / "all"))
            out["all"] = tree(Path(everything))
        with report.step("load_dict") as out:
            out["config"] = mlflow.artifacts.load_dict(f"runs:/{parent_id}/config/params.json")
    report.write()


if __name__ == "__main__":
    main()
