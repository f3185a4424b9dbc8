"""Causal graphs over run factors for the attribution of metric shifts.

A graph is a list of (cause, effect) edges over factor names (namespaced: "params.lr",
"data.version", ...) plus the outcome node "metric". Pure Python: the graph is small
(tens of nodes), and dowhy/networkx are only needed where effects get identified.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

METRIC_NODE = "metric"

# Prefix of a factor name -> its kind. Anything else is "other".
_KINDS = {
    "params": "param",
    "tags": "tag",
    "code": "code",
    "env": "environment",
    "hardware": "hardware",
    "data": "data",
}
# Tokens of a param/tag key that mark it as describing the data set (a likely confounder:
# a new data version often comes with new params).
_DATA_TOKENS = frozenset({"data", "dataset", "datasets", "corpus", "data_version", "dataset_version"})


def factor_kind(name: str) -> str:
    """Kind of a factor from its namespace prefix: param, tag, code, environment, hardware, data, other."""
    prefix = name.split(".", 1)[0]
    return _KINDS.get(prefix, "other")


def is_confounder_like(name: str) -> bool:
    """Whether a factor plausibly drives other factors (data version/dataset, hardware, environment).

    Such factors are set before the run's params are chosen (the data version decides the
    sequence length, the GPU decides the batch size), so the default graph lets them cause
    the others.
    """
    kind = factor_kind(name)
    if kind in ("data", "hardware", "environment"):
        return True
    if kind in ("param", "tag"):
        key = name.split(".", 1)[1].lower() if "." in name else name.lower()
        tokens = set(re.split(r"[._\-/]", key))
        return bool(tokens & _DATA_TOKENS) or key in _DATA_TOKENS
    return False


def default_graph(factors: Sequence[str]) -> list[tuple[str, str]]:
    """Default graph: every factor -> metric; confounder-like factors -> every other (non-confounder) factor."""
    confounders = [f for f in factors if is_confounder_like(f)]
    others = [f for f in factors if not is_confounder_like(f)]
    edges = [(f, METRIC_NODE) for f in factors]
    edges += [(c, o) for c in confounders for o in others]
    return edges


def validate_graph(
    edges: Iterable[tuple[str, str]], factors: Sequence[str], metric_aliases: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Check a user graph and return it normalised (metric aliases mapped to "metric", duplicates dropped).

    Raises ValueError on a malformed edge, a node that is neither a known factor nor the
    metric, a self loop, an edge out of the metric, or a cycle.
    """
    known = set(factors)
    aliases = {METRIC_NODE, *metric_aliases}
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for edge in edges:
        if not (isinstance(edge, tuple | list) and len(edge) == 2):
            raise ValueError(f"graph edge {edge!r} is not a (cause, effect) pair")
        cause, effect = (METRIC_NODE if str(n) in aliases else str(n) for n in edge)
        for node in (cause, effect):
            if node != METRIC_NODE and node not in known:
                raise ValueError(
                    f"graph node {node!r} is neither a factor of the input nor {METRIC_NODE!r}; "
                    f"known factors: {sorted(known)}"
                )
        if cause == effect:
            raise ValueError(f"graph edge {cause!r} -> {effect!r} is a self loop")
        if cause == METRIC_NODE:
            raise ValueError(
                f"graph edge {cause!r} -> {effect!r} leaves the metric: the metric is the outcome"
            )
        if (cause, effect) not in seen:
            seen.add((cause, effect))
            out.append((cause, effect))
    cycle = find_cycle(out)
    if cycle:
        raise ValueError("graph has a cycle: " + " -> ".join([*cycle, cycle[0]]))
    return out


def find_cycle(edges: Sequence[tuple[str, str]]) -> list[str] | None:
    """One directed cycle of the graph as a node list, or None when it is acyclic."""
    children: dict[str, list[str]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
        children.setdefault(b, [])
    state: dict[str, int] = dict.fromkeys(children, 0)  # 0 new, 1 on stack, 2 done
    for root in children:
        if state[root]:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            if i < len(children[node]):
                stack[-1] = (node, i + 1)
                nxt = children[node][i]
                if state[nxt] == 1:
                    return path[path.index(nxt) :]
                if state[nxt] == 0:
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None


def contract(edges: Sequence[tuple[str, str]], rename: dict[str, str]) -> list[tuple[str, str]]:
    """Graph with nodes renamed (several factors merged into one node), keeping it acyclic.

    Self loops from the merge are dropped; an edge that would close a cycle through a merged
    node is skipped (edges are added in order, so the earlier ones win).
    """
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for a, b in edges:
        edge = (rename.get(a, a), rename.get(b, b))
        if edge[0] == edge[1] or edge in seen:
            continue
        if find_cycle([*out, edge]) is None:
            seen.add(edge)
            out.append(edge)
    return out


def ancestors(edges: Sequence[tuple[str, str]], node: str) -> set[str]:
    """All nodes with a directed path to `node`."""
    parents: dict[str, list[str]] = {}
    for a, b in edges:
        parents.setdefault(b, []).append(a)
    found: set[str] = set()
    todo = [node]
    while todo:
        for p in parents.get(todo.pop(), []):
            if p not in found:
                found.add(p)
                todo.append(p)
    return found
