"""The comparison computations (runledger.compare) on planted data, each statistic checked
against an independent computation (scipy.stats, numpy by hand, the SDK's own logger)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from runledger.compare.fairness import fairness, metric_direction, parse
from runledger.compare.importance import encode, hyperparameter_importance
from runledger.compare.model import RunData, SeriesStat
from runledger.compare.performance import Entity, default_metrics, performance
from runledger.compare.resources import resources, run_resources
from runledger.compare.stability import stability, summarise
from runledger_sdk.helpers.fairness import log_fairness_metrics


def run(run_id: str, params: dict[str, Any] | None = None, **metrics: float) -> RunData:
    return RunData(
        run_id=run_id,
        params={k: str(v) for k, v in (params or {}).items()},
        metrics={k.replace("__", "/"): v for k, v in metrics.items()},
    )


# ------------------------------------------------------------------ performance


def test_performance_deltas_best_and_group_means() -> None:
    runs = {
        "a": run("a", val__loss=0.50, val__acc=0.80),
        "b": run("b", val__loss=0.40, val__acc=0.85),
        "c": run("c", val__loss=0.30, val__acc=0.70),
        "d": run("d", val__loss=0.20),
    }
    entities = [
        Entity("a", "run", ("a",)),
        Entity("g", "group", ("b", "c", "d")),
    ]
    out = performance(entities, runs, ["val/loss", "val/acc"])
    assert out["baseline"] == "a"
    loss, acc = out["metrics"]
    assert loss["direction"] == "min" and acc["direction"] == "max"
    g = loss["rows"][1]
    assert g["value"] == pytest.approx(np.mean([0.4, 0.3, 0.2]))
    assert g["std"] == pytest.approx(np.std([0.4, 0.3, 0.2], ddof=1))
    assert g["delta"] == pytest.approx(0.3 - 0.5)
    assert g["relative_delta"] == pytest.approx((0.3 - 0.5) / 0.5)
    assert g["improvement"] == pytest.approx(0.2)  # lower loss: better
    assert loss["best"] == ["g"]
    # acc: the group mean covers the two runs that logged it; d is missing.
    ga = acc["rows"][1]
    assert (ga["n"], ga["missing"]) == (2, 1)
    assert ga["value"] == pytest.approx(0.775)
    assert acc["best"] == ["a"] and acc["rows"][0]["is_best"] and acc["rows"][0]["is_baseline"]
    assert ga["improvement"] == pytest.approx(0.775 - 0.8)


def test_performance_directions_from_the_request_and_default_metrics() -> None:
    runs = {"a": run("a", score=1.0), "b": run("b", score=2.0)}
    entities = [Entity("a", "run", ("a",)), Entity("b", "run", ("b",))]
    assert performance(entities, runs, ["score"])["metrics"][0]["best"] == ["b"]
    assert performance(entities, runs, ["score"], {"score": "min"}, "b")["metrics"][0]["best"] == ["a"]
    r = run("x", val__acc=1, system__cpu_percent=5)
    r = RunData("x", metrics={**r.metrics, "val/fairness/sex/f/tpr": 0.5})
    assert default_metrics([r]) == ["val/acc"]


# ------------------------------------------------------------------ resources


def stat(values: list[float]) -> SeriesStat:
    return SeriesStat(min(values), max(values), float(np.mean(values)), len(values))


def test_resources_from_system_metrics() -> None:
    cpu, rss = [50.0, 150.0, 100.0], [1e9, 3e9, 2e9]
    gpu0, gpu1 = [10.0, 90.0], [40.0, 60.0, 80.0]
    r = RunData(
        "r",
        start_time=1_000,
        end_time=1_000 + 7_200_000,  # two hours
        series={
            "system/cpu_percent": stat(cpu),
            "system/process_rss_bytes": stat(rss),
            "system/gpu0/utilization_percent": stat(gpu0),
            "system/gpu1/utilization_percent": stat(gpu1),
            "system/gpu0/memory_used_bytes": stat([5e9, 7e9]),
            "system/gpu1/memory_used_bytes": stat([6e9]),
            "system/gpu0/power_watts": stat([100.0, 200.0]),
            "system/gpu1/power_watts": stat([300.0]),
            "system/wall_time_s": stat([10.0, 20.0]),
        },
        model_size_bytes=1234,
    )
    row = run_resources(r)
    assert row["training_time_s"] == 7200.0 and row["training_time_source"] == "end_time - start_time"
    assert row["peak_memory_bytes"] == 3e9
    assert row["cpu_percent_mean"] == pytest.approx(100.0) and row["cpu_percent_peak"] == 150.0
    assert row["gpu_count"] == 2
    assert row["gpu_utilization_mean"] == pytest.approx((np.mean(gpu0) + np.mean(gpu1)) / 2)
    assert row["gpu_utilization_peak"] == 90.0
    assert row["gpu_memory_peak_bytes"] == 7e9
    assert row["gpu_power_mean_watts"] == pytest.approx(150.0 + 300.0)
    assert row["gpu_hours"] == pytest.approx(2 * 2.0)
    assert row["model_size_bytes"] == 1234 and row["model_size_source"] == "artifacts"
    assert row["model_parameters"] is None
    # What the SDK's log_model logs wins over the artifacts.
    logged = RunData(
        "l", metrics={"system/model_size_bytes": 99.0, "system/model_parameters": 7.0}, model_size_bytes=5
    )
    row = run_resources(logged)
    assert (row["model_size_bytes"], row["model_size_source"], row["model_parameters"]) == (
        99.0, "system/model_size_bytes", 7.0
    )  # fmt: skip
    # A run still going: its wall time samples.
    going = RunData("g", start_time=1_000, series={"system/wall_time_s": stat([10.0, 30.0])})
    row = run_resources(going)
    assert row["training_time_s"] == 30.0 and row["gpu_hours"] == 0.0 and row["gpu_count"] == 0
    # A group: means of its runs, GPU-hours summed.
    out = resources([Entity("grp", "group", ("r", "g"))], {"r": r, "g": going})
    grp = out["rows"][0]
    assert grp["training_time_s"] == pytest.approx((7200 + 30) / 2)
    assert grp["training_time_total_s"] == pytest.approx(7230)
    assert grp["gpu_hours"] == pytest.approx(4.0)
    assert grp["peak_memory_bytes"] == 3e9  # only r has it


# ------------------------------------------------------------------ stability


def test_summary_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0.8, 0.05, size=7)
    s = summarise(x, 0.95)
    assert s.mean == pytest.approx(x.mean())
    assert s.std == pytest.approx(math.sqrt(((x - x.mean()) ** 2).sum() / (len(x) - 1)))
    assert s.cv == pytest.approx(s.std / abs(x.mean()))
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert s.ci_low == pytest.approx(low) and s.ci_high == pytest.approx(high)
    low90, high90 = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    s90 = summarise(x, 0.9)
    assert s90.ci_low == pytest.approx(low90) and s90.ci_high == pytest.approx(high90)
    one = summarise([3.0])
    assert (one.n, one.mean, one.std, one.cv, one.ci_low) == (1, 3.0, None, None, None)


def test_stability_groups_runs_differing_only_by_seed() -> None:
    rng = np.random.default_rng(0)
    stable = rng.normal(0.9, 0.005, size=5)
    shaky = rng.normal(0.6, 0.2, size=4)
    runs = [
        run(f"s{i}", {"lr": 0.1, "layers": 2, "seed": i, "out": f"/tmp/{i}"}, acc=v)
        for i, v in enumerate(stable)
    ]
    runs += [
        run(f"u{i}", {"lr": 1.0, "layers": 2, "seed": i, "out": "x"}, acc=v) for i, v in enumerate(shaky)
    ]
    runs += [run("lonely", {"lr": 0.5, "layers": 2, "seed": 1}, acc=0.5)]
    out = stability(runs, ["acc"], ignore_params=["out"], cv_threshold=0.1)
    assert out["single_run_configurations"] == 1
    by_lr = {c["configuration"]["lr"]: c for c in out["configurations"]}
    assert set(by_lr) == {"0.1", "1.0"}
    for lr, values in (("0.1", stable), ("1.0", shaky)):
        c = by_lr[lr]
        assert c["configuration"] == {"lr": lr, "layers": "2"}
        assert c["seeds"] == sorted(str(i) for i in range(len(values)))
        (m,) = c["metrics"]
        assert m["n"] == len(values)
        assert m["mean"] == pytest.approx(np.mean(values))
        assert m["std"] == pytest.approx(np.std(values, ddof=1))
        assert m["cv"] == pytest.approx(np.std(values, ddof=1) / abs(np.mean(values)))
        low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        assert (m["ci_low"], m["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert not by_lr["0.1"]["unstable"]
    assert by_lr["1.0"]["unstable"] and by_lr["1.0"]["unstable_metrics"] == ["acc"]
    # Without ignoring "out", the stable runs all differ: no group of them.
    assert {c["configuration"]["lr"] for c in stability(runs, ["acc"])["configurations"]} == {"1.0"}


# ------------------------------------------------------------------ fairness


class Sink:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None:
        self.logged.update(metrics)


def planted_predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    groups = rng.choice(np.array(["a", "b", "c"]), size=600, p=[0.5, 0.3, 0.2])
    y = rng.integers(0, 2, size=600)
    # Group c's classifier is worse: flip 40% of its predictions, 10% elsewhere.
    flip = rng.random(600) < np.where(groups == "c", 0.4, 0.1)
    pred = np.where(flip, 1 - y, y)
    return y, pred, groups


def test_fairness_reads_what_the_sdk_logs_and_recomputes_the_gaps() -> None:
    y, pred, groups = planted_predictions()
    logged = log_fairness_metrics(y, pred, groups, attribute="region", run=Sink())  # type: ignore[arg-type]
    out = fairness([RunData("r", metrics={**logged, "val/acc": 0.9})])
    (entry,) = out["runs"]
    (attr,) = entry["attributes"]
    assert (attr["prefix"], attr["attribute"]) == ("val/", "region")
    assert set(attr["groups"]) == {"a", "b", "c"}
    # Independent computation, by hand with numpy.
    sel = {g: pred[groups == g].mean() for g in "abc"}
    tpr = {g: pred[(groups == g) & (y == 1)].mean() for g in "abc"}
    fpr = {g: pred[(groups == g) & (y == 0)].mean() for g in "abc"}
    acc = {g: (pred == y)[groups == g].mean() for g in "abc"}
    rows = {m["metric"]: m for m in attr["metrics"]}
    assert set(rows) == {"accuracy", "selection_rate", "tpr", "fpr"}
    assert rows["accuracy"]["worst_group"] == min(acc, key=acc.__getitem__) == "c"
    assert rows["accuracy"]["max_difference"] == pytest.approx(max(acc.values()) - min(acc.values()))
    assert rows["accuracy"]["min_ratio"] == pytest.approx(min(acc.values()) / max(acc.values()))
    assert rows["fpr"]["worst_group"] == max(fpr, key=fpr.__getitem__)
    for g in "abc":
        assert rows["tpr"]["values"][g] == pytest.approx(tpr[g])
    dp = max(sel.values()) - min(sel.values())
    eo = max(max(tpr.values()) - min(tpr.values()), max(fpr.values()) - min(fpr.values()))
    assert attr["demographic_parity_difference"] == pytest.approx(dp)
    assert attr["demographic_parity_ratio"] == pytest.approx(min(sel.values()) / max(sel.values()))
    assert attr["equalized_odds_difference"] == pytest.approx(eo)
    assert attr["equalized_odds_ratio"] == pytest.approx(
        min(min(tpr.values()) / max(tpr.values()), min(fpr.values()) / max(fpr.values()))
    )
    # The SDK's own gaps agree with the recomputed ones.
    assert attr["logged"]["demographic_parity_difference"] == pytest.approx(dp)
    assert attr["logged"]["equalized_odds_difference"] == pytest.approx(eo)


def test_fairness_naming_without_prefix_and_partial_inputs() -> None:
    metrics = {
        "fairness/sex/f/accuracy": 0.7,
        "fairness/sex/m/accuracy": 0.9,
        "fairness/sex/f/count": 10.0,
        "fairness/sex/m/count": 30.0,
        "eval/x/fairness/age/young/accuracy": 0.8,  # one group only: not reported
        "fairness/sex/f/bogus/deep": 1.0,  # not the naming
    }
    parsed = parse(metrics)
    assert set(parsed) == {("", "sex"), ("eval/x/", "age")}
    (entry,) = fairness([RunData("r", metrics=metrics)])["runs"]
    (attr,) = entry["attributes"]
    assert attr["attribute"] == "sex" and [m["metric"] for m in attr["metrics"]] == ["accuracy"]
    assert "demographic_parity_difference" not in attr and "equalized_odds_difference" not in attr
    assert metric_direction("fpr") == "min" and metric_direction("tpr") == "max"


# ------------------------------------------------------------------ hyperparameter importance


def test_importance_ranks_the_planted_effects() -> None:
    rng = np.random.default_rng(1)
    n = 60
    lr = rng.choice([0.001, 0.01, 0.1, 1.0], size=n)
    opt = rng.choice(["adam", "sgd"], size=n)
    noise_param = rng.integers(0, 5, size=n)
    y = 2.0 * np.log10(lr) + 0.5 * (opt == "adam") + rng.normal(0, 0.05, size=n)
    params = [
        {"lr": str(lr[i]), "optimizer": str(opt[i]), "junk": str(noise_param[i]), "seed": str(i),
         "run_dir": f"/tmp/{i}", "const": "1"}
        for i in range(n)
    ]  # fmt: skip
    out = hyperparameter_importance(params, y.tolist(), n_repeats=5)
    ranked = [r["param"] for r in out["importances"]]
    assert ranked[:2] == ["lr", "optimizer"], out["importances"]
    assert out["reliable"] and out["cv_r2"] > 0.8
    assert out["excluded"] == {
        "seed": "excluded by the request",
        "const": "constant",
        "run_dir": "a distinct value per run (an identifier)",
    }
    junk = next(r for r in out["importances"] if r["param"] == "junk")
    lr_row = out["importances"][0]
    assert junk["importance"] < 0.05 < lr_row["ci_low"]
    assert lr_row["ci_low"] <= lr_row["importance"] <= lr_row["ci_high"]
    assert [r["rank"] for r in out["importances"]] == [1, 2, 3]
    assert sum(r["share"] for r in out["importances"]) == pytest.approx(1.0)
    # The same ranking from gradient boosting.
    gb = hyperparameter_importance(params, y.tolist(), model="gradient_boosting", n_repeats=3)
    assert [r["param"] for r in gb["importances"]][:2] == ["lr", "optimizer"]


def test_importance_needs_enough_runs_and_encodes_params() -> None:
    few = hyperparameter_importance([{"lr": "1"}] * 3, [1.0, 2.0, 3.0])
    assert few["importances"] == [] and "at least" in few["note"]
    x, names, kinds, excluded = encode([{"a": "1", "b": "x"}, {"a": "3", "b": "y"}, {"b": "x"}])
    assert names == ["a", "b"] and kinds == {"a": "numeric", "b": "categorical"}
    assert x[:, 0].tolist() == [1.0, 3.0, 2.0]  # the missing value: the median
    assert x[:, 1].tolist() == [0.0, 1.0, 0.0]
    assert excluded == {}
