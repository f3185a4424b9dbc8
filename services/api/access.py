"""What the caller may see and change: experiments of its tenant by its grants, and
experiments other tenants shared with its tenant (read-only).

Resources the caller may not read answer 404 exactly like missing ones (no existence
leak); a resource it may read but not change answers 403. Everything is decided
on the snapshot the request authenticated with, so a revoked grant or share stops
applying as soon as the watcher reloads (within a second).
"""

from __future__ import annotations

from dataclasses import dataclass

from runledger.auth.model import Action
from runledger.events.codec import DEFAULT_EXPERIMENT_ID
from services.api.errors import NotFound, PermissionDenied
from services.api.principal import Principal
from services.api.runs.repository import RunRepository
from services.api.runs.schemas import RunInfo


@dataclass(frozen=True, slots=True)
class Located:
    """Where a resource the caller may read lives: the tenant holding its rows, its experiment."""

    tenant_id: str
    experiment_id: str
    shared: bool  # another tenant's experiment, shared read-only with the caller's


class Access:
    """Authorization questions about experiments, for one caller."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.tenant_id = principal.tenant_id

    def readable(self) -> frozenset[str] | None:
        """Experiments of the caller's tenant it may read (None = all)."""
        return self.principal.readable_experiments()

    def can_read(self, experiment_id: str) -> bool:
        return self.principal.can(Action.READ, experiment_id)

    def can_write(self, experiment_id: str) -> bool:
        return self.principal.can(Action.WRITE, experiment_id)

    def shared(self) -> dict[str, str]:
        """Shared experiments the caller may read: experiment id -> owner tenant.

        A share reaches whoever may read that experiment id in its own tenant (viewer
        and up; a grant narrowed to another experiment does not). "0" is never shared.
        """
        shares = self.principal.authorizer.snapshot.shares_to(self.tenant_id)
        return {
            experiment_id: owner
            for experiment_id, owner in shares.items()
            if experiment_id != DEFAULT_EXPERIMENT_ID
            and owner != self.tenant_id
            and self.can_read(experiment_id)
        }

    def require_listing(self) -> None:
        """Tenant-wide lists need READ somewhere in the tenant."""
        if not self.principal.can(Action.READ):
            raise PermissionDenied("the caller's role does not allow reading this tenant")

    def require_create_experiment(self) -> None:
        """Creating an experiment needs WRITE on the whole tenant (not a grant narrowed to one)."""
        if not self.principal.can(Action.WRITE):
            raise PermissionDenied("creating experiments needs the engineer role on the whole tenant")

    def require_write(self, located: Located, what: str) -> None:
        """403 unless the caller may change `located` (never a shared experiment)."""
        if located.shared:
            raise PermissionDenied(
                f"{what} belongs to experiment {located.experiment_id}, shared read-only by another tenant"
            )
        if not self.can_write(located.experiment_id):
            raise PermissionDenied(f"the caller may not write experiment {located.experiment_id}")

    def locate(self, own_tenant_holds: bool, experiment_id: str, what: str) -> Located:
        """Where a resource of `experiment_id` lives for the caller, or NotFound.

        `own_tenant_holds`: whether the caller's tenant has it (its own wins over a share).
        """
        if own_tenant_holds:
            if self.can_read(experiment_id):
                return Located(self.tenant_id, experiment_id, shared=False)
            raise NotFound(f"{what} does not exist")
        owner = self.shared().get(experiment_id)
        if owner is None:
            raise NotFound(f"{what} does not exist")
        return Located(owner, experiment_id, shared=True)


async def readable_run(access: Access, runs: RunRepository, run_id: str) -> tuple[Located, RunInfo]:
    """The run and where it lives, if the caller may read it; NotFound otherwise."""
    found = await runs.locate(run_id, access.shared())
    if found is None:
        raise NotFound(f"run {run_id!r} does not exist")
    tenant_id, info = found
    return access.locate(tenant_id == access.tenant_id, info.experiment_id, f"run {run_id!r}"), info
