"""Role-based access with domains = tenants, decided by casbin.

Policy lines are generated from the grants in the snapshot (Postgres is the policy
store): a tenant-wide grant makes the principal a member of the built-in role in
that tenant; a grant narrowed to one experiment makes it a member of a role that
only matches that experiment. Deny by default. Decisions are cached per
snapshot, so a policy change (a new snapshot) invalidates them all at once.
"""

from __future__ import annotations

import threading
from typing import Any

import casbin
from casbin import persist

from runledger.auth.model import ROLE_ACTIONS, Action, AuthSnapshot, Grant, Role

# Objects: "tenant" (tenant-wide things: list and create experiments, lineage,
# models), "experiment/<id>" (an experiment and its runs), "admin" (administration).
_MODEL = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && (p.dom == "*" || r.dom == p.dom) && keyMatch(r.obj, p.obj) && r.act == p.act
"""

TENANT_OBJECT = "tenant"
ADMIN_OBJECT = "admin"
_DECISION_CACHE_LIMIT = 100_000


def experiment_object(experiment_id: str) -> str:
    return f"experiment/{experiment_id}"


def _role_subject(role: Role, experiment_id: str = "") -> str:
    return f"role:{role.value}" if not experiment_id else f"role:{role.value}@{experiment_id}"


def _policy_lines(snapshot: AuthSnapshot) -> list[str]:
    lines: list[str] = []
    for role, actions in ROLE_ACTIONS.items():
        for action in sorted(actions):
            lines.append(f"p, {_role_subject(role)}, *, experiment/*, {action}")
            if action is not Action.ADMIN:
                lines.append(f"p, {_role_subject(role)}, *, {TENANT_OBJECT}, {action}")
            else:
                lines.append(f"p, {_role_subject(role)}, *, {ADMIN_OBJECT}, {action}")
    narrowed: set[tuple[str, Role, str]] = set()
    for grant in snapshot.grants:
        subject = _role_subject(grant.role, grant.experiment_id)
        lines.append(f"g, {grant.principal_id}, {subject}, {grant.tenant_id}")
        if grant.experiment_id:
            narrowed.add((grant.tenant_id, grant.role, grant.experiment_id))
    for tenant_id, role, experiment_id in sorted(narrowed):
        subject = _role_subject(role, experiment_id)
        for action in sorted(ROLE_ACTIONS[role] - {Action.ADMIN}):
            lines.append(f"p, {subject}, {tenant_id}, {experiment_object(experiment_id)}, {action}")
        # Listing the tenant shows it only the experiments it may read (see readable_experiments).
        lines.append(f"p, {subject}, {tenant_id}, {TENANT_OBJECT}, read")
    return lines


class _SnapshotAdapter(persist.Adapter):  # type: ignore[misc]
    """casbin's view of the grants in a snapshot (read-only; changes go through Postgres)."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def load_policy(self, model: Any) -> None:
        for line in self._lines:
            persist.load_policy_line(line, model)


class Authorizer:
    """Answers "may principal P do A on O in tenant T" for one snapshot."""

    def __init__(self, snapshot: AuthSnapshot) -> None:
        self.snapshot = snapshot
        model = casbin.model.Model()
        model.load_model_from_text(_MODEL)
        self._enforcer = casbin.Enforcer(model, _SnapshotAdapter(_policy_lines(snapshot)))
        self._lock = threading.Lock()  # casbin's role manager is not safe for concurrent use
        self._cache: dict[tuple[str, str, str, str], bool] = {}
        self._readable: dict[tuple[str, str], frozenset[str] | None] = {}
        # Grants narrowed to one experiment, by (principal, tenant): looked up per request.
        self._narrowed: dict[tuple[str, str], list[Grant]] = {}
        for grant in snapshot.grants:
            if grant.experiment_id:
                self._narrowed.setdefault((grant.principal_id, grant.tenant_id), []).append(grant)

    def is_superadmin(self, principal_id: str) -> bool:
        return principal_id in self.snapshot.superadmins

    def can(
        self, principal_id: str, tenant_id: str, action: Action, experiment_id: str | None = None
    ) -> bool:
        """Whether the principal may do `action` on the experiment (None: tenant-wide; ADMIN: admin)."""
        if action is Action.ADMIN:
            obj = ADMIN_OBJECT
        elif experiment_id is None:
            obj = TENANT_OBJECT
        else:
            obj = experiment_object(experiment_id)
        key = (principal_id, tenant_id, obj, action.value)
        decision = self._cache.get(key)
        if decision is None:
            with self._lock:
                decision = bool(self._enforcer.enforce(principal_id, tenant_id, obj, action.value))
            if len(self._cache) >= _DECISION_CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def may_act_in(self, principal_id: str, tenant_id: str, action: Action) -> bool:
        """Whether the principal may do `action` on at least something of the tenant."""
        if self.can(principal_id, tenant_id, action):
            return True
        return any(action in ROLE_ACTIONS[g.role] for g in self._narrowed.get((principal_id, tenant_id), ()))

    def readable_experiments(self, principal_id: str, tenant_id: str) -> frozenset[str] | None:
        """Experiments of the tenant the principal may read: None = all of them."""
        key = (principal_id, tenant_id)
        if key in self._readable:
            return self._readable[key]
        if self.can(principal_id, tenant_id, Action.READ, "*"):
            result: frozenset[str] | None = None
        else:
            result = frozenset(g.experiment_id for g in self._narrowed.get(key, ()))
        self._readable[key] = result
        return result
