"""SDK metric helpers (runledger_sdk.helpers): each family against an independent computation.

Expected values are hand-computed on small cases, or plain-numpy / plain-Python formulas
written here (never scikit-learn checking itself); what was logged is read back from the
InMemoryTransport.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import runledger_sdk as rl
from runledger.events.codec import decode, metric_arrays
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType
from runledger_sdk.helpers import (
    log_classification_metrics,
    log_fairness_metrics,
    log_ranking_metrics,
    log_regression_metrics,
)
from tests.support.sdk import memory_sdk

pytest.importorskip("sklearn")

Floats = npt.NDArray[np.float64]


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    with memory_sdk(tmp_path) as memory:  # only what the test logs: no run context
        yield memory


def logged(transport: rl.InMemoryTransport, run_id: str) -> dict[str, tuple[float, int]]:
    """Every metric the run received: key -> (value, step)."""
    assert rl.flush(5)
    out: dict[str, tuple[float, int]] = {}
    for record in transport.records:
        event = decode(record.value)
        if event.envelope.type is not EventType.METRICS_LOGGED or event.envelope.run_id != run_id:
            continue
        payload = event.payload
        assert isinstance(payload, MetricColumns)
        kidx, values, steps, _ = metric_arrays(payload)
        for k, v, s in zip(kidx.tolist(), values.tolist(), steps.tolist(), strict=True):
            assert payload.keys[k] not in out, "each key is logged once"
            out[payload.keys[k]] = (v, s)
    return out


def assert_logged(
    transport: rl.InMemoryTransport, run: rl.Run, result: dict[str, float], step: int | None = None
) -> None:
    """The run received exactly the returned dict (at `step` when given)."""
    got = logged(transport, run.run_id)
    assert got.keys() == result.keys()
    for key, value in result.items():
        assert got[key][0] == pytest.approx(value, nan_ok=True), key
        if step is not None:
            assert got[key][1] == step, key


def check(result: dict[str, float], expected: dict[str, float], prefix: str = "val/") -> None:
    for key, value in expected.items():
        assert result[prefix + key] == pytest.approx(value, abs=1e-12), key


# --- independent references ------------------------------------------------------------------


def auc_reference(positive: npt.NDArray[np.bool_], score: Floats) -> float:
    """ROC-AUC as the Mann-Whitney statistic: P(score_pos > score_neg) + P(tie) / 2."""
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def prf_reference(matrix: Floats) -> dict[str, float]:
    """Macro / micro / weighted precision, recall and F1 from a confusion matrix (rows = truth)."""
    tp = np.diag(matrix)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.nan_to_num(tp / predicted)
        r = np.nan_to_num(tp / support)
        f = np.nan_to_num(2 * p * r / (p + r))
    micro = tp.sum() / matrix.sum()
    out: dict[str, float] = {}
    for name, per_class in (("precision", p), ("recall", r), ("f1", f)):
        out[f"{name}_macro"] = float(per_class.mean())
        out[f"{name}_micro"] = float(micro)
        out[f"{name}_weighted"] = float((per_class * support).sum() / support.sum())
    return out


# --- classification ------------------------------------------------------------------------------


def test_classification_hand_computed_three_classes(transport: rl.InMemoryTransport) -> None:
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "a", "b", "c", "c"]
    # Confusion [[2,1,0],[0,1,1],[0,0,1]]: precision a 1, b 1/2, c 1/2; recall a 2/3, b 1/2,
    # c 1; F1 a 4/5, b 1/2, c 2/3; supports 3, 2, 1.
    with rl.start_run() as run:
        result = log_classification_metrics(y_true, y_pred, step=3)
    check(
        result,
        {
            "accuracy": 4 / 6,
            "precision_macro": 2 / 3,
            "recall_macro": 13 / 18,
            "f1_macro": 59 / 90,
            "precision_micro": 4 / 6,
            "recall_micro": 4 / 6,
            "f1_micro": 4 / 6,
            "precision_weighted": 0.75,
            "recall_weighted": 4 / 6,
            "f1_weighted": 61 / 90,
        },
    )
    cells = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    for i, t in enumerate("abc"):
        for j, p in enumerate("abc"):
            assert result[f"val/confusion/{t}/{p}"] == cells[i][j]
    assert result.confusion_matrix.tolist() == cells
    assert result.labels == ["a", "b", "c"]
    assert "val/roc_auc" not in result
    assert len(result) == 10 + 9
    assert_logged(transport, run, result, step=3)


def test_classification_binary_roc_auc(transport: rl.InMemoryTransport) -> None:
    # Positive scores .35 and .8 against negatives .1 and .4: 3 of 4 pairs ordered -> 0.75.
    y_true = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8])
    with rl.start_run() as run:
        one_d = log_classification_metrics(y_true, (score > 0.5).astype(int), score, prefix="test/")
        proba = log_classification_metrics(
            ["neg", "neg", "pos", "pos"], ["neg"] * 4, np.column_stack([1 - score, score]), prefix="p/"
        )
    assert one_d["test/roc_auc"] == pytest.approx(0.75)
    assert proba["p/roc_auc"] == pytest.approx(0.75)  # positive class = labels[1] = "pos"
    assert one_d["test/accuracy"] == pytest.approx(0.75)
    assert proba["p/confusion/pos/neg"] == 2.0 and proba["p/precision_macro"] == pytest.approx(0.25)
    assert_logged(transport, run, {**one_d, **proba})


def test_classification_random_against_numpy(transport: rl.InMemoryTransport) -> None:
    rng = np.random.default_rng(5)
    n, k = 400, 4
    y_true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y_true]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = np.where(rng.random(n) < 0.1, 3, proba.argmax(axis=1))  # class 3 over-predicted
    matrix = np.zeros((k, k))
    np.add.at(matrix, (y_true, y_pred), 1)
    with rl.start_run() as run:
        result = log_classification_metrics(y_true.tolist(), y_pred, proba)
    check(result, {"accuracy": float(np.mean(y_true == y_pred)), **prf_reference(matrix)})
    expected_auc = np.mean([auc_reference(y_true == c, proba[:, c]) for c in range(k)])
    assert result["val/roc_auc"] == pytest.approx(expected_auc)
    assert np.array_equal(result.confusion_matrix, matrix)
    assert_logged(transport, run, result)


def test_classification_labels_order_subset_and_missing_class(transport: rl.InMemoryTransport) -> None:
    y_true = [2, 0, 1, 1, 0]
    y_pred = [2, 0, 1, 0, 0]
    with rl.start_run():
        result = log_classification_metrics(y_true, y_pred, labels=[2, 1, 0, 5])
    # Class 5 never occurs: zero precision/recall/F1 (no warning), zero row and column.
    assert result.labels == [2, 1, 0, 5]
    assert result.confusion_matrix.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    assert result["val/confusion/1/0"] == 1.0
    check(result, prf_reference(result.confusion_matrix.astype(float)))


def test_classification_large_label_set_skips_cells(transport: rl.InMemoryTransport) -> None:
    y = np.arange(42) % 21
    with rl.start_run() as run:
        result = log_classification_metrics(y, np.roll(y, 1))
    assert result.confusion_matrix.shape == (21, 21)
    assert result.confusion_matrix.sum() == 42
    assert not any("confusion" in key for key in result)
    assert result["val/accuracy"] == 0.0
    assert_logged(transport, run, result)


def test_classification_roc_auc_undefined_is_left_out(transport: rl.InMemoryTransport) -> None:
    with rl.start_run(), pytest.warns(RuntimeWarning, match="ROC-AUC is not defined"):
        result = log_classification_metrics([1, 1, 1], [0, 1, 1], [0.2, 0.7, 0.9])
    assert "val/roc_auc" not in result
    assert result["val/accuracy"] == pytest.approx(2 / 3)


def test_classification_pandas_and_label_keys(transport: rl.InMemoryTransport) -> None:
    pd = pytest.importorskip("pandas")
    y_true = pd.Series(["cat/dog", "bird", "bird"], index=[10, 11, 12])
    y_pred = pd.Series(["bird", "bird", "cat/dog"], index=[12, 11, 10])  # by position, not index
    with rl.start_run():
        result = log_classification_metrics(y_true, y_pred)
    assert result["val/confusion/cat_dog/bird"] == 1.0
    assert result["val/accuracy"] == pytest.approx(1 / 3)
    with rl.start_run(), pytest.raises(ValueError, match="same metric key segment"):
        log_classification_metrics(["a/b", "a_b"], ["a/b", "a_b"])


def test_classification_shape_errors(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        with pytest.raises(ValueError, match="y_true has 4, y_pred has 3"):
            log_classification_metrics([0, 1, 0, 1], [0, 1, 0])
        with pytest.raises(ValueError, match="1-D"):
            log_classification_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
        with pytest.raises(ValueError, match=r"shape \(n_samples, 3\)"):
            log_classification_metrics([0, 1, 2], [0, 1, 2], np.ones((3, 2)) / 2)
        with pytest.raises(ValueError, match="y_score has 2 rows"):
            log_classification_metrics([0, 1, 0], [0, 1, 0], [0.1, 0.9])
        with pytest.raises(ValueError, match="empty"):
            log_classification_metrics([], [])
    assert logged(transport, run.run_id) == {}  # nothing half-logged


def test_missing_sklearn_names_the_extra(
    transport: rl.InMemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)  # import fails
    with rl.start_run(), pytest.raises(ImportError, match=r"runledger\[metrics\]"):
        log_regression_metrics([1.0], [1.0])
    with rl.start_run(), pytest.raises(ImportError, match="metrics` extra"):
        log_ranking_metrics(y_true=[[1, 0]], y_score=[[0.5, 0.2]])
    with rl.start_run():  # list-form ranking and fairness are plain numpy
        log_ranking_metrics([[1]], [{1}], k=1)
        log_fairness_metrics([1, 0], [1, 1], ["a", "b"], attribute="g")


def test_explicit_run_argument(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as parent, rl.start_run(nested=True) as child:
        assert rl.active_run() is child
        result = log_regression_metrics([1.0, 2.0], [1.0, 3.0], run=parent, step=7)
    assert_logged(transport, parent, result, step=7)
    assert logged(transport, child.run_id) == {}


# --- regression --------------------------------------------------------------------------------


def test_regression_hand_computed(transport: rl.InMemoryTransport) -> None:
    y_true = [3.0, -0.5, 2.0, 7.0]
    y_pred = [2.5, 0.0, 2.0, 8.0]
    # Residuals .5, -.5, 0, -1; mean(y) = 2.875, SS_tot = 29.1875; Var(residual) = .3125.
    with rl.start_run() as run:
        result = log_regression_metrics(y_true, y_pred, prefix="eval/", step=2)
    check(
        result,
        {
            "mae": 0.5,
            "mse": 0.375,
            "rmse": math.sqrt(0.375),
            "r2": 1 - 1.5 / 29.1875,
            "explained_variance": 1 - 0.3125 / (29.1875 / 4),
        },
        prefix="eval/",
    )
    assert len(result) == 5
    assert_logged(transport, run, result, step=2)


def test_regression_multi_output_against_numpy(transport: rl.InMemoryTransport) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(11)
    y_true = rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1]
    y_pred = y_true + rng.normal(size=(200, 3)) * [0.5, 2.0, 0.05]
    err = y_true - y_pred
    mse = (err**2).mean(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    with rl.start_run():
        result = log_regression_metrics(pd.DataFrame(y_true), y_pred)
    check(
        result,
        {
            "mae": float(np.abs(err).mean()),
            "mse": float(mse.mean()),
            "rmse": float(np.sqrt(mse).mean()),
            "r2": float((1 - (err**2).sum(axis=0) / ss_tot).mean()),
            "explained_variance": float((1 - err.var(axis=0) / y_true.var(axis=0)).mean()),
        },
    )
    with rl.start_run():  # a single-column frame is a vector
        single = log_regression_metrics(pd.Series(y_true[:, 0]), y_pred[:, :1])
    assert single["val/mse"] == pytest.approx(mse[0])


def test_regression_errors(transport: rl.InMemoryTransport) -> None:
    with rl.start_run():
        with pytest.raises(ValueError, match="y_true has 3, y_pred has 2"):
            log_regression_metrics([1, 2, 3], [1, 2])
        with pytest.raises(ValueError, match="same shape"):
            log_regression_metrics(np.ones((3, 2)), np.ones((3, 3)))
        with pytest.raises(ValueError, match="NaN"):
            log_regression_metrics([1.0, float("nan")], [1.0, 2.0])
        with pytest.raises(ValueError, match="numbers"):
            log_regression_metrics(["a", "b"], [1.0, 2.0])


# --- ranking -------------------------------------------------------------------------------------


def ranking_reference(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[set[Any]], ks: Sequence[int]
) -> dict[str, float]:
    """Plain-Python, one user at a time: the textbook definitions."""
    sums: dict[str, float] = {}
    users = 0
    for items, wanted in zip(ranked, relevant, strict=True):
        if not wanted:
            continue
        users += 1
        seen: set[Any] = set()
        hits = []
        for item in items:
            hits.append(item in wanted and item not in seen)
            seen.add(item)
        for K in ks:
            top = hits[:K]
            found = sum(top)
            ap = sum(sum(top[: i + 1]) / (i + 1) for i, h in enumerate(top) if h)
            dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(top) if h)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(len(wanted), K)))
            for name, value in (
                ("hit_rate", float(found > 0)),
                ("precision", found / K),
                ("recall", found / len(wanted)),
                ("map", ap / min(len(wanted), K)),
                ("ndcg", dcg / idcg),
            ):
                sums[f"{name}_at_{K}"] = sums.get(f"{name}_at_{K}", 0.0) + value
    return {key: total / users for key, total in sums.items()}


def test_ranking_hand_computed(transport: rl.InMemoryTransport) -> None:
    ranked = [[1, 2, 3, 4, 5], [7, 8, 9], [1, 2]]
    relevant = [{2, 5, 9}, {7}, set()]  # the third user has nothing relevant: not counted
    # User 0 hits at ranks 2 and 5 (3 relevant), user 1 at rank 1 (1 relevant).
    l2, l3, l6 = math.log2(2), math.log2(3), math.log2(6)
    idcg3 = 1 / l2 + 1 / l3 + 1 / math.log2(4)
    with rl.start_run() as run:
        result = log_ranking_metrics(ranked, relevant, k=[5, 1, 3], step=1)
    check(
        result,
        {
            "hit_rate_at_1": 0.5,
            "precision_at_1": 0.5,
            "recall_at_1": 0.5,
            "map_at_1": 0.5,
            "ndcg_at_1": 0.5,
            "hit_rate_at_3": 1.0,
            "precision_at_3": 1 / 3,
            "recall_at_3": (1 / 3 + 1) / 2,
            "map_at_3": ((1 / 2) / 3 + 1) / 2,
            "ndcg_at_3": ((1 / l3) / idcg3 + 1) / 2,
            "hit_rate_at_5": 1.0,
            "precision_at_5": (2 / 5 + 1 / 5) / 2,
            "recall_at_5": (2 / 3 + 1) / 2,
            "map_at_5": ((1 / 2 + 2 / 5) / 3 + 1) / 2,
            "ndcg_at_5": ((1 / l3 + 1 / l6) / idcg3 + 1) / 2,
        },
    )
    assert len(result) == 15
    assert_logged(transport, run, result, step=1)


def test_ranking_random_lists_against_reference(transport: rl.InMemoryTransport) -> None:
    rng = np.random.default_rng(3)
    catalogue = [f"item-{i}" for i in range(60)]
    ranked: list[list[str]] = []
    relevant: list[set[str]] = []
    for _ in range(300):
        ranked.append([catalogue[i] for i in rng.integers(0, 60, rng.integers(0, 25))])  # repeats too
        relevant.append({catalogue[i] for i in rng.integers(0, 60, rng.integers(0, 8))})
    ks = (1, 3, 10, 30)
    with rl.start_run() as run:
        result = log_ranking_metrics(ranked, relevant, k=ks)
    check(result, ranking_reference(ranked, relevant, ks))
    assert_logged(transport, run, result)
    with rl.start_run():  # a 2-D array of int ids, relevant as lists
        ids = rng.integers(0, 50, (40, 12))
        wanted = [list(rng.integers(0, 50, 5)) for _ in range(40)]
        as_array = log_ranking_metrics(ids, wanted, k=(2, 12))
    check(as_array, ranking_reference(ids.tolist(), [set(w) for w in wanted], (2, 12)))
    with rl.start_run():  # ids too spread out to pair with the user directly: factorized
        big_wanted = [np.array(ws, dtype=np.uint64) * 10**17 for ws in wanted]  # int64 vs uint64
        huge = log_ranking_metrics(ids * 10**17, big_wanted, k=(2, 12))
    assert huge == as_array


def test_ranking_matrix_graded_ndcg(transport: rl.InMemoryTransport) -> None:
    # Ranked by score: items 1 (gain 2), 2 (0), 3 (1), 0 (3).
    y_true = [[3, 2, 0, 1]]
    y_score = [[0.1, 0.9, 0.8, 0.3]]
    dcg = 2 / math.log2(2) + 0 + 1 / math.log2(4) + 3 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    dcg2, idcg2 = 2.0, 3 + 2 / math.log2(3)
    with rl.start_run() as run:
        result = log_ranking_metrics(y_true=y_true, y_score=y_score, k=(2, 4))
    check(
        result,
        {
            "ndcg_at_4": dcg / idcg,
            "ndcg_at_2": dcg2 / idcg2,
            "precision_at_2": 0.5,
            "recall_at_2": 1 / 3,
            "map_at_2": (1 / 1) / 2,
            "hit_rate_at_4": 1.0,
            "map_at_4": (1 + 2 / 3 + 3 / 4) / 3,
        },
    )
    assert_logged(transport, run, result)
    with rl.start_run():  # tied scores: NDCG averages over the tied orders, as sklearn does
        tied = log_ranking_metrics(y_true=[[1, 0, 0]], y_score=[[0.5, 0.5, 0.1]], k=1)
    assert tied["val/ndcg_at_1"] == pytest.approx(0.5)
    assert tied["val/precision_at_1"] == 1.0  # ties broken by column order


def test_ranking_matrix_matches_lists(transport: rl.InMemoryTransport) -> None:
    rng = np.random.default_rng(8)
    y_true = (rng.random((150, 30)) < 0.1).astype(int)
    y_score = rng.random((150, 30))  # continuous: no ties
    order = np.argsort(-y_score, axis=1)
    ranked = order.tolist()
    relevant = [set(np.flatnonzero(row).tolist()) for row in y_true]
    ks = (1, 5, 10, 40)  # 40 > n_items: padded
    with rl.start_run():
        result = log_ranking_metrics(y_true=y_true, y_score=y_score, k=ks)
    check(result, ranking_reference(ranked, relevant, ks))


def test_ranking_errors(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        with pytest.raises(ValueError, match="either ranked and relevant, or y_true"):
            log_ranking_metrics()
        with pytest.raises(ValueError, match="either"):
            log_ranking_metrics([[1]], [{1}], y_true=[[1]], y_score=[[1]])
        with pytest.raises(ValueError, match="give both"):
            log_ranking_metrics([[1]])
        with pytest.raises(ValueError, match="2 users but relevant has 1"):
            log_ranking_metrics([[1], [2]], [{1}])
        with pytest.raises(ValueError, match="positive ints"):
            log_ranking_metrics([[1]], [{1}], k=0)
        with pytest.raises(ValueError, match="int or a list of ints"):
            log_ranking_metrics([[1]], [{1}], k=["5"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="no user has a relevant item"):
            log_ranking_metrics([[1, 2]], [set()])
        with pytest.raises(ValueError, match="ordered sequence"):
            log_ranking_metrics([{1, 2}], [{1}])
        with pytest.raises(ValueError, match="same shape"):
            log_ranking_metrics(y_true=[[1, 0]], y_score=[[0.1, 0.2, 0.3]])
        with pytest.raises(ValueError, match=">= 0"):
            log_ranking_metrics(y_true=[[1, -1]], y_score=[[0.1, 0.2]])
    assert logged(transport, run.run_id) == {}


# --- fairness ------------------------------------------------------------------------------------


def test_fairness_hand_computed(transport: rl.InMemoryTransport) -> None:
    groups = ["A"] * 4 + ["B"] * 4 + ["C"] * 2
    y_true = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    y_pred = [1, 0, 1, 0, 1, 1, 1, 0, 0, 1]
    # A: acc 1/2, selection 1/2, TPR 1/2, FPR 1/2. B: acc 1/2, selection 3/4, TPR 1, FPR 2/3.
    # C has no positives: no TPR; acc 1/2, selection 1/2, FPR 1/2.
    with rl.start_run() as run:
        result = log_fairness_metrics(y_true, y_pred, groups, attribute="region", step=4)
    f = "val/fairness/region/"
    assert result == pytest.approx(
        {
            f + "A/count": 4,
            f + "A/accuracy": 0.5,
            f + "A/selection_rate": 0.5,
            f + "A/tpr": 0.5,
            f + "A/fpr": 0.5,
            f + "B/count": 4,
            f + "B/accuracy": 0.5,
            f + "B/selection_rate": 0.75,
            f + "B/tpr": 1.0,
            f + "B/fpr": 2 / 3,
            f + "C/count": 2,
            f + "C/accuracy": 0.5,
            f + "C/selection_rate": 0.5,
            f + "C/fpr": 0.5,
            f + "demographic_parity_difference": 0.25,
            f + "equalized_odds_difference": 0.5,  # TPR gap 1/2 > FPR gap 1/6
        }
    )
    assert_logged(transport, run, result, step=4)


def test_fairness_random_against_reference(transport: rl.InMemoryTransport) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(21)
    n = 500
    sex = pd.Series(rng.choice(["female", "male", "non/binary"], n), name="sex")
    y_true = np.where(rng.random(n) < 0.4, "yes", "no")
    y_pred = np.where(rng.random(n) < 0.5, "yes", "no")
    with rl.start_run():
        result = log_fairness_metrics(y_true, y_pred, sex, pos_label="yes", prefix="")
    selection, tprs, fprs = [], [], []
    for group, key in (("female", "female"), ("male", "male"), ("non/binary", "non_binary")):
        g = sex.to_numpy() == group
        t, p = y_true[g] == "yes", y_pred[g] == "yes"
        expected = {
            "count": g.sum(),
            "accuracy": np.mean(t == p),
            "selection_rate": p.mean(),
            "tpr": (t & p).sum() / t.sum(),
            "fpr": (~t & p).sum() / (~t).sum(),
        }
        for metric, value in expected.items():
            assert result[f"fairness/sex/{key}/{metric}"] == pytest.approx(value), (group, metric)
        selection.append(expected["selection_rate"])
        tprs.append(expected["tpr"])
        fprs.append(expected["fpr"])
    assert result["fairness/sex/demographic_parity_difference"] == pytest.approx(
        max(selection) - min(selection)
    )
    assert result["fairness/sex/equalized_odds_difference"] == pytest.approx(
        max(max(tprs) - min(tprs), max(fprs) - min(fprs))
    )
    assert len(result) == 3 * 5 + 2


def test_fairness_errors(transport: rl.InMemoryTransport) -> None:
    with rl.start_run():
        with pytest.raises(ValueError, match="name the sensitive attribute"):
            log_fairness_metrics([1, 0], [1, 0], ["a", "b"])
        with pytest.raises(ValueError, match="binary outcomes"):
            log_fairness_metrics([0, 1, 2], [0, 1, 1], ["a", "b", "a"], attribute="g")
        with pytest.raises(ValueError, match="pos_label 1 occurs in neither"):
            log_fairness_metrics(["y", "n"], ["y", "y"], ["a", "b"], attribute="g")
        with pytest.raises(ValueError, match="y_true has 2, y_pred has 2, sensitive has 3"):
            log_fairness_metrics([1, 0], [1, 0], ["a", "b", "c"], attribute="g")
