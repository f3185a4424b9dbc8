"""Parameter counts of model objects (runledger_sdk.model_size), with real scikit-learn models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from runledger_sdk.model_size import count_parameters


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    return x, (x[:, 0] + x[:, 1] > 0).astype(int)


def test_linear_models_count_coefficients_and_intercepts(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    assert count_parameters(LogisticRegression().fit(x, y)) == 4 + 1
    three_classes = LogisticRegression().fit(x, np.arange(len(y)) % 3)
    assert count_parameters(three_classes) == 3 * 4 + 3
    assert count_parameters(LinearRegression().fit(x, x[:, :2])) == 2 * 4 + 2


def test_trees_and_ensembles_count_nodes(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    assert count_parameters(tree) == tree.tree_.node_count > 1
    forest = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(x, y)
    assert count_parameters(forest) == sum(t.tree_.node_count for t in forest.estimators_)
    boosted = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(x, y)
    assert count_parameters(boosted) == sum(t.tree_.node_count for t in boosted.estimators_.flat)


def test_mlp_pipeline_and_other_estimators(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0).fit(x, y)
    assert count_parameters(mlp) == (4 * 5 + 5) + (5 * 1 + 1)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    # The scaler's mean_, var_ and scale_ (4 each; n_samples_seen_ is a counter) + the model.
    assert count_parameters(pipeline) == 3 * 4 + 5
    kmeans = KMeans(n_clusters=3, n_init=1, random_state=0).fit(x)
    assert count_parameters(kmeans) == 3 * 4  # cluster_centers_; labels_ are not parameters


def test_unfitted_and_unknown_objects_are_unknown() -> None:
    assert count_parameters(LogisticRegression()) is None
    assert count_parameters(DecisionTreeClassifier()) is None
    assert count_parameters(object()) is None
    assert count_parameters("weights.pt") is None
    assert count_parameters({}) is None


def test_arrays_and_state_dicts() -> None:
    assert count_parameters(np.zeros((3, 5))) == 15
    state = {"layer1": {"w": np.zeros((4, 2)), "b": np.zeros(4)}, "head": [np.ones(3), np.ones(1)]}
    assert count_parameters(state) == 8 + 4 + 3 + 1
    assert count_parameters({"w": np.zeros(2), "name": "x"}) == 2  # non-arrays are skipped
