"""MlflowClient: search_runs filters and order_by, paging, a >25,000-point history, the latest-metric rule,
param immutability, delete/restore, and mlflow.search_runs() into pandas."""

from __future__ import annotations

import math
import time
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

from tests.support.mlflow_scripts.common import Report, error_code

# name: (params, metrics, tags, status); r5 stays RUNNING, has no `model` param, no `team` tag, no loss on r2.
RUNS: dict[str, tuple[dict[str, str], dict[str, float], dict[str, str], str]] = {
    "r0": ({"model": "cnn", "lr": "0.1"}, {"acc": 0.9, "loss": 0.3}, {"team": "vision"}, "FINISHED"),
    "r1": ({"model": "cnn", "lr": "0.01"}, {"acc": 0.7, "loss": 0.5}, {"team": "vision-x"}, "FINISHED"),
    "r2": ({"model": "rnn", "lr": "0.1"}, {"acc": 0.6}, {"team": "nlp"}, "FAILED"),
    "r3": ({"model": "rnn", "lr": "0.001"}, {"acc": 0.4, "loss": 0.9}, {"team": "nlp"}, "FINISHED"),
    "r4": ({"model": "mlp", "lr": "0.01"}, {"acc": 0.95, "loss": 0.1}, {"team": "Vision"}, "KILLED"),
    "r5": ({"lr": "0.5"}, {"acc": 0.2, "loss": 1.2}, {}, "RUNNING"),
}
HISTORY_POINTS = 30_000  # > 25,000: the client pages get-history


def main() -> None:
    report = Report()
    client = MlflowClient()
    base = int(time.time() * 1000) - 3_600_000
    ids: dict[str, str] = {}
    names: dict[str, str] = {}

    with report.step("setup") as out:
        exp = client.create_experiment(report.args["experiment"], tags={"project": "search"})
        out["experiment_id"] = exp
        got = client.get_experiment(exp)
        out["experiment"] = {"name": got.name, "tags": got.tags, "lifecycle_stage": got.lifecycle_stage}
        found = client.search_experiments(filter_string=f"name = '{report.args['experiment']}'")
        out["search_experiments"] = [e.experiment_id for e in found]
        for i, (name, (params, metrics, tags, status)) in enumerate(RUNS.items()):
            run = client.create_run(exp, start_time=base + i * 1000, run_name=name)
            ids[name] = run.info.run_id
            names[run.info.run_id] = name
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, base + i * 1000, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            if status != "RUNNING":
                client.set_terminated(run.info.run_id, status, end_time=base + i * 1000 + 500)
        out["ids"] = ids

    def search(filter_string: str = "", order_by: list[str] | None = None, **kw: Any) -> list[str]:
        runs = client.search_runs([exp], filter_string, order_by=order_by, **kw)
        return [names.get(r.info.run_id, r.info.run_id) for r in runs]

    # label: (filter, order_by); the tests hold the expected run names by label.
    queries: dict[str, tuple[str, list[str] | None]] = {
        "metric_gt": ("metrics.acc > 0.5", ["metrics.acc DESC"]),
        "param_eq": ("params.model = 'cnn'", ["attributes.start_time ASC"]),
        "tag_like": ("tags.team LIKE 'vision%'", ["attributes.run_name ASC"]),
        "tag_ilike": ("tags.team ILIKE 'vision%'", ["attributes.run_name ASC"]),
        "status": ("attributes.status = 'FINISHED'", ["metrics.acc ASC"]),
        "and": ("metrics.acc >= 0.6 AND params.lr = '0.1'", ["attributes.run_name DESC"]),
        "param_ne": ("params.lr != '0.1'", ["attributes.run_name ASC"]),
        "param_is_null": ("params.model IS NULL", None),
        "tag_not_null_and_metric": ("tags.team IS NOT NULL AND metrics.loss <= 0.5", ["metrics.loss ASC"]),
        "nulls_last_asc": ("", ["metrics.loss ASC"]),
        "nulls_last_desc": ("", ["metrics.loss DESC"]),
        "default_order": ("", None),
        "backticked_tag": ("tags.`mlflow.runName` = 'r2'", None),
        "run_name_like_two_orders": (
            "attributes.run_name LIKE 'r%' AND attributes.status != 'RUNNING'",
            ["params.model ASC", "metrics.acc DESC"],
        ),
        "start_time": (f"attributes.start_time >= {base + 3000}", None),
        "attr_alias": ("attr.run_name = 'r1'", None),
    }
    with report.step("search") as out:
        for label, (filter_string, order_by) in queries.items():
            try:
                out[label] = search(filter_string, order_by)
            except Exception as exc:
                out[label] = f"error {getattr(exc, 'error_code', type(exc).__name__)}: {exc}"
    with report.step("search_in") as out:
        out["runs"] = search(
            f"attributes.run_id IN ('{ids['r1']}', '{ids['r3']}')", ["attributes.run_name ASC"]
        )
    with report.step("search_errors") as out:
        out["or"] = error_code(lambda: client.search_runs([exp], "metrics.acc > 0.5 OR params.model = 'cnn'"))
        out["bad_key"] = error_code(lambda: client.search_runs([exp], "nonsense.acc > 1"))
    with report.step("paging") as out:
        pages: list[list[str]] = []
        token: str | None = None
        while len(pages) < 10:
            page = client.search_runs(
                [exp], order_by=["attributes.run_name ASC"], max_results=2, page_token=token
            )
            pages.append([names[r.info.run_id] for r in page])
            token = page.token
            if not token:
                break
        out["pages"] = pages

    with report.step("latest_metric") as out:
        run_id = ids["r1"]
        client.log_batch(
            run_id,
            metrics=[
                Metric("lat", 1.0, base + 100, 2),
                Metric("lat", 2.0, base + 50, 5),
                Metric("lat", 3.0, base + 50, 5),
            ],
        )
        out["latest"] = client.get_run(run_id).data.metrics["lat"]
        out["history"] = [
            [m.timestamp - base, m.step, m.value] for m in client.get_metric_history(run_id, "lat")
        ]
    with report.step("special_values") as out:
        run_id = ids["r1"]
        for step, value in enumerate((math.nan, math.inf, -math.inf)):
            client.log_metric(run_id, "weird", value, timestamp=base + step, step=step)
        out["history"] = [repr(m.value) for m in client.get_metric_history(run_id, "weird")]
    with report.step("params_immutable") as out:
        out["same"] = error_code(lambda: client.log_param(ids["r1"], "model", "cnn"))
        out["different"] = error_code(lambda: client.log_param(ids["r1"], "model", "transformer"))
        out["params"] = client.get_run(ids["r1"]).data.params

    with report.step("history") as out:
        run_id = ids["r0"]
        started = time.perf_counter()
        for chunk in range(0, HISTORY_POINTS, 1000):
            points = [Metric("long", step / 7, base + step, step) for step in range(chunk, chunk + 1000)]
            client.log_batch(run_id, metrics=points, synchronous=True)
        out["log_s"] = time.perf_counter() - started
        started = time.perf_counter()
        history = client.get_metric_history(run_id, "long")
        out["read_s"] = time.perf_counter() - started
        out["count"] = len(history)
        out["steps_in_order"] = [m.step for m in history] == list(range(HISTORY_POINTS))
        out["values_exact"] = [m.value for m in history] == [step / 7 for step in range(HISTORY_POINTS)]
        out["timestamps_exact"] = [m.timestamp for m in history] == [base + s for s in range(HISTORY_POINTS)]
        out["latest"] = client.get_run(run_id).data.metrics["long"]

    with report.step("delete_restore") as out:
        victim = ids["r3"]
        client.delete_run(victim)
        out["deleted_stage"] = client.get_run(victim).info.lifecycle_stage
        out["active"] = search(order_by=["attributes.run_name ASC"])
        out["deleted"] = search(order_by=["attributes.run_name ASC"], run_view_type=ViewType.DELETED_ONLY)
        out["all"] = search(order_by=["attributes.run_name ASC"], run_view_type=ViewType.ALL)
        client.restore_run(victim)
        out["restored_stage"] = client.get_run(victim).info.lifecycle_stage
        out["active_after"] = search(order_by=["attributes.run_name ASC"])

    with report.step("pandas") as out:
        frame = mlflow.search_runs(
            experiment_ids=[exp], filter_string="params.model = 'cnn'", order_by=["metrics.acc DESC"]
        )
        out["type"] = type(frame).__module__ + "." + type(frame).__name__
        out["columns"] = sorted(frame.columns)
        cols = ["run_id", "status", "metrics.acc", "metrics.loss", "params.model", "params.lr", "tags.team"]
        out["rows"] = frame[cols].to_dict("records")
        out["ids"] = ids
        by_name = mlflow.search_runs(experiment_names=[report.args["experiment"]], output_format="list")
        out["list_count"] = len(by_name)
    report.write()


if __name__ == "__main__":
    main()
