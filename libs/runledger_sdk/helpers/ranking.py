"""Ranking / recommendation metrics at K in one call: hit rate, NDCG, MAP, precision, recall."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from itertools import chain
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from runledger_sdk.helpers._common import concat, emit, factorize, sklearn_metrics, to_array

if TYPE_CHECKING:
    from runledger_sdk.run import Run

Hits = tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]


def log_ranking_metrics(
    ranked: Any = None,
    relevant: Any = None,
    *,
    y_true: Any = None,
    y_score: Any = None,
    k: int | Iterable[int] = (1, 5, 10),
    prefix: str = "val/",
    step: SupportsIndex | None = None,
    run: Run | None = None,
) -> dict[str, float]:
    """Compute ranking metrics at each K and log them to the active run (or `run`).

    Give either
    - `ranked` (per user, the recommended items best first: a list of lists, or a 2-D array
      of item ids) and `relevant` (per user, the collection of relevant items), or
    - `y_true` (relevance, >= 0, shape (n_users, n_items); graded or 0/1) and `y_score`
      (the scores the items are ranked by, same shape; 1-D for a single user).

    Logged for each K (keys after `prefix`): `hit_rate_at_{K}` (share of users with a relevant
    item in the top K), `precision_at_{K}` (relevant items in the top K / K), `recall_at_{K}`
    (/ the user's relevant items), `map_at_{K}` (mean average precision, each user's AP
    normalised by min(relevant items, K)) and `ndcg_at_{K}` (linear gains, log2 discount).
    Means are over the users with at least one relevant item (the others have no defined
    recall or NDCG); an item repeated in a ranked list counts once. With `y_true`/`y_score`,
    NDCG is sklearn's `ndcg_score` (graded gains; tied scores averaged) and the other
    metrics take relevance > 0 as relevant, breaking ties by column order; that path needs
    the `metrics` extra (scikit-learn). Computation is vectorised with numpy (the lists are
    only walked once per user to flatten them). Returns what was logged.
    """
    ks = _ks(k)
    kmax = ks[-1]
    lists = ranked is not None or relevant is not None
    matrix = y_true is not None or y_score is not None
    if lists == matrix:
        raise ValueError("give either ranked and relevant, or y_true and y_score")
    graded: tuple[Any, npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
    if lists:
        if ranked is None or relevant is None:
            raise ValueError("ranked and relevant go together: give both")
        hits, n_relevant = _hits_from_lists(ranked, relevant, kmax)
    else:
        if y_true is None or y_score is None:
            raise ValueError("y_true and y_score go together: give both")
        skm = sklearn_metrics("log_ranking_metrics with y_true/y_score")
        gains, scores = _matrices(y_true, y_score)
        hits, n_relevant = _hits_from_scores(gains, scores, kmax)
        graded = skm, gains, scores
    keep = n_relevant > 0
    if not keep.any():
        raise ValueError("no user has a relevant item: ranking metrics are undefined")
    hits, n_relevant = hits[keep], n_relevant[keep]

    ranks = np.arange(1, kmax + 1)
    discount = 1.0 / np.log2(ranks + 1)
    found = np.cumsum(hits, axis=1)  # relevant items within the first i+1
    precision_sums = np.cumsum(np.where(hits, found / ranks, 0.0), axis=1)
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    metrics: dict[str, float] = {}
    for K in ks:
        in_top = found[:, K - 1]
        capped = np.minimum(n_relevant, K)
        metrics[f"{prefix}hit_rate_at_{K}"] = float(np.mean(in_top > 0))
        metrics[f"{prefix}ndcg_at_{K}"] = float(np.mean(dcg[:, K - 1] / ideal[capped - 1]))
        metrics[f"{prefix}map_at_{K}"] = float(np.mean(precision_sums[:, K - 1] / capped))
        metrics[f"{prefix}precision_at_{K}"] = float(np.mean(in_top / K))
        metrics[f"{prefix}recall_at_{K}"] = float(np.mean(in_top / n_relevant))
    if graded is not None and graded[1].shape[1] > 1:
        # Graded gains, ties averaged (sklearn refuses a single item: its NDCG is 1, as computed).
        skm, gains, scores = graded
        gains, scores = gains[keep], scores[keep]
        ordered = np.sort(scores, axis=1)
        ties = bool((ordered[:, 1:] == ordered[:, :-1]).any())  # without, sklearn's fast path is exact
        for K in ks:
            metrics[f"{prefix}ndcg_at_{K}"] = float(skm.ndcg_score(gains, scores, k=K, ignore_ties=not ties))
    emit(metrics, step, run)
    return metrics


def _ks(k: int | Iterable[int]) -> list[int]:
    try:
        values = [operator.index(k)] if not isinstance(k, Iterable) else [operator.index(v) for v in k]
    except TypeError:
        raise ValueError(f"k must be an int or a list of ints, not {k!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"k must be one or more positive ints, got {k!r}")
    return sorted(set(values))


def _items(rows: list[Any], cut: int | None, what: str) -> tuple[npt.NDArray[Any], npt.NDArray[np.intp]]:
    """The items of every row, flattened, and each row's count (its first `cut` items)."""
    try:
        kept = rows if cut is None else [row[:cut] for row in rows]
        lengths = np.fromiter(map(len, kept), dtype=np.intp, count=len(kept))
    except TypeError:
        order = "an ordered sequence (list, tuple, array)" if cut else "a collection"
        raise ValueError(f"each row of {what} must be {order} of item ids") from None
    flat = list(chain.from_iterable(kept))
    try:
        items = np.asarray(flat)
    except (TypeError, ValueError):
        items = np.empty(0)
    if items.ndim != 1 or len(items) != len(flat) or items.dtype.kind not in "biufUS":
        items = np.fromiter(flat, dtype=object, count=len(flat))
    return items, lengths


def _hits_from_lists(ranked: Any, relevant: Any, kmax: int) -> Hits:
    """(hits[user, rank] for the first kmax ranks, relevant-item count of each user)."""
    relevant_rows = list(relevant)
    if isinstance(ranked, np.ndarray) and ranked.ndim == 2:  # a fixed-length list per user
        n = len(ranked)
        shown = ranked[:, :kmax].reshape(-1)
        shown_counts = np.full(n, min(kmax, ranked.shape[1]), dtype=np.intp)
    else:
        ranked_rows = list(ranked)
        n = len(ranked_rows)
        shown, shown_counts = _items(ranked_rows, kmax, "ranked")
    if len(relevant_rows) != n:
        raise ValueError(f"ranked has {n} users but relevant has {len(relevant_rows)}: give one row per user")
    if n == 0:
        raise ValueError("ranked is empty")
    wanted, wanted_counts = _items(relevant_rows, None, "relevant")
    # Each (user, item) as one int64, user * n_items + item code; the relevant ones sorted, unique.
    codes, n_items = _item_codes(concat(shown, wanted), n)
    users = np.arange(n, dtype=np.int64)
    shown_user = np.repeat(users, shown_counts)
    shown_pairs = shown_user * n_items + codes[: len(shown)]
    wanted_pairs = np.sort(np.repeat(users, wanted_counts) * n_items + codes[len(shown) :])
    wanted_pairs = wanted_pairs[np.r_[True, wanted_pairs[1:] != wanted_pairs[:-1]][: len(wanted_pairs)]]
    n_relevant = np.bincount(wanted_pairs // n_items, minlength=n).astype(np.int64)

    # Binary search in the sorted relevant pairs: the (longer) ranked pairs are never sorted.
    is_hit = np.zeros(len(shown_pairs), dtype=bool)
    if len(wanted_pairs):
        at = np.minimum(np.searchsorted(wanted_pairs, shown_pairs), len(wanted_pairs) - 1)
        is_hit = wanted_pairs[at] == shown_pairs
    # An item repeated in a ranked list counts once: keep the first position of each hit pair.
    hit_at = np.flatnonzero(is_hit)
    is_hit[hit_at] = False
    is_hit[hit_at[np.unique(shown_pairs[hit_at], return_index=True)[1]]] = True
    starts = np.cumsum(shown_counts) - shown_counts
    rank = np.arange(len(shown_pairs)) - np.repeat(starts, shown_counts)
    hits = np.zeros((n, kmax), dtype=bool)
    hits[shown_user, rank] = is_hit
    return hits, n_relevant


def _item_codes(items: npt.NDArray[Any], n_users: int) -> tuple[npt.NDArray[np.int64], int]:
    """(a code per item in 0..n_items-1, n_items): integer ids as they are, else factorized."""
    if items.dtype.kind in "biu" and len(items):
        low, high = int(items.min()), int(items.max())
        span = high - low + 1
        if low > -(2**62) and high < 2**62 and span * max(n_users, 1) < 2**62:
            return items.astype(np.int64) - low, span
    _, codes = factorize(items)
    return codes.astype(np.int64), int(codes.max()) + 1 if len(codes) else 1


def _matrices(y_true: Any, y_score: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    arrays = []
    for name, values in (("y_true", y_true), ("y_score", y_score)):
        array = to_array(values, name)
        if array.ndim == 1:
            array = array[None, :]  # one user
        if array.ndim != 2 or array.size == 0:
            raise ValueError(f"{name} must have shape (n_users, n_items), got {np.shape(values)}")
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold numbers") from None
        if np.isnan(array).any():
            raise ValueError(f"{name} holds NaN")
        arrays.append(array)
    gains, scores = arrays
    if gains.shape != scores.shape:
        raise ValueError(f"y_true and y_score must have the same shape: {gains.shape} and {scores.shape}")
    if (gains < 0).any() or not np.isfinite(gains).all():
        raise ValueError("y_true (relevance) must be finite and >= 0")
    return gains, scores


def _hits_from_scores(gains: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], kmax: int) -> Hits:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
    hits = np.zeros((len(gains), kmax), dtype=bool)
    hits[:, : order.shape[1]] = np.take_along_axis(gains, order, axis=1) > 0
    return hits, (gains > 0).sum(axis=1).astype(np.int64)
