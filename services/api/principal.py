"""Who a request acts for: the tenant of its API key, and what that key's principal may do."""

from __future__ import annotations

from dataclasses import dataclass

from runledger.auth.model import Action
from runledger.auth.rbac import Authorizer


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. Every repository scopes its queries by `tenant_id`."""

    tenant_id: str
    authorizer: Authorizer
    principal_id: str = ""
    key_id: str = ""
    # HMAC key of the presented API key: events the API emits for this caller are signed
    # with it, so the projector checks them exactly like events an SDK produced.
    signing_key: bytes = b""
    source: str = ""  # client address, for the audit log

    @property
    def user_id(self) -> str:
        """The audit name of the caller (principal id)."""
        return self.principal_id

    @property
    def is_superadmin(self) -> bool:
        return self.authorizer.is_superadmin(self.principal_id)

    def can(self, action: Action, experiment_id: str | None = None) -> bool:
        """May the caller do `action` on this experiment of its tenant (None: tenant-wide)?"""
        return self.authorizer.can(self.principal_id, self.tenant_id, action, experiment_id)

    def may_act(self, action: Action) -> bool:
        """May the caller do `action` on anything at all of its tenant?"""
        return self.authorizer.may_act_in(self.principal_id, self.tenant_id, action)

    def readable_experiments(self) -> frozenset[str] | None:
        """Experiments of its tenant the caller may read; None = all."""
        return self.authorizer.readable_experiments(self.principal_id, self.tenant_id)
