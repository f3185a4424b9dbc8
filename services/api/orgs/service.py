"""What the org-admin routes do: validate, change the control plane, audit, reload.

Every change and its audit entries commit in one transaction; afterwards this
process reloads its auth snapshot at once (other processes follow within a poll).
Ids of another tenant are answered exactly like ids that do not exist (404), and
such attempts are recorded as denials in the caller's own audit log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from runledger.auth.keys import InvalidKey, normalize_key_id
from runledger.auth.model import Grant, Quota, Role, Share, TaggingPolicy, TenantStatus
from runledger.events.codec import DEFAULT_EXPERIMENT_ID
from runledger.stores.postgres import PgConnection, directory
from runledger.stores.postgres.directory import AuditEntry
from services.api.deps import Runtime
from services.api.errors import AlreadyExists, InvalidParameter, NotFound
from services.api.orgs import schemas
from services.api.orgs.repository import OrgRepository
from services.api.principal import Principal


class OrgService:
    """Org administration acting for one authenticated caller."""

    def __init__(
        self, repository: OrgRepository, runtime: Runtime, principal: Principal, request: str
    ) -> None:
        """`request` ("METHOD path") names a refused attempt in the audit log."""
        self._repo = repository
        self._runtime = runtime
        self._principal = principal
        self._request = request
        self._tenant = principal.tenant_id

    # --- helpers ---------------------------------------------------------------------------

    def _entry(
        self, action: str, target: str, details: dict[str, Any] | None = None, *, tenant: str | None = ""
    ) -> AuditEntry:
        """An `ok` entry by the caller; tenant "" = the caller's tenant, None = the platform log."""
        return AuditEntry(
            tenant_id=self._tenant if tenant == "" else tenant,
            actor=self._principal.principal_id,
            action=action,
            outcome="ok",
            target=target,
            source=self._principal.source,
            details=details or {},
        )

    async def _commit(self, conn: PgConnection, *entries: AuditEntry) -> None:
        """Append the entries in the change's transaction (the caller's `async with` commits)."""
        await directory.append_audit(conn, entries)

    def _not_found(self, what: str) -> NotFound:
        """A 404, recorded as a denied attempt in the caller's tenant (nothing about the other one)."""
        self._runtime.audit.record(
            AuditEntry(
                tenant_id=self._tenant,
                actor=self._principal.principal_id,
                action=self._request,
                outcome="denied",
                source=self._principal.source,
                details={"reason": f"not found: {what}"},
            )
        )
        return NotFound(f"{what} does not exist")

    async def _principal_row(self, conn: PgConnection, principal_id: str) -> Any:
        row = await self._repo.principal(conn, self._tenant, principal_id)
        if row is None:
            raise self._not_found(f"principal {principal_id!r}")
        return row

    async def _reload(self) -> None:
        await self._runtime.auth.refresh()

    # --- tenants (platform superadmin) -----------------------------------------------------

    async def create_tenant(self, body: schemas.TenantCreate) -> schemas.TenantCreated:
        """A new tenant, and with `admin_user` its first admin and that admin's first key."""
        admin: schemas.Principal | None = None
        new_key: schemas.NewKey | None = None
        async with self._repo.transaction() as conn:
            if not await directory.create_tenant(conn, body.tenant_id, body.name):
                raise AlreadyExists(f"tenant {body.tenant_id!r} already exists")
            details: dict[str, Any] = {"name": body.name}
            if body.admin_user is not None:
                principal_id = await directory.create_principal(conn, body.tenant_id, "user", body.admin_user)
                await directory.grant_role(
                    conn, Grant(body.tenant_id, principal_id, Role.ADMIN), self._principal.principal_id
                )
                key = await directory.create_key(conn, principal_id, name="initial admin key")
                row = await self._repo.principal(conn, body.tenant_id, principal_id)
                assert row is not None
                admin = schemas.Principal(**dict(row), roles=[schemas.RoleGrant(role=Role.ADMIN)])
                new_key = schemas.NewKey(key_id=key.key_id, principal_id=principal_id, api_key=key.token)
                details |= {
                    "admin_user": body.admin_user,
                    "admin_principal": principal_id,
                    "key_id": key.key_id,
                }
            tenant = await self._repo.tenant(conn, body.tenant_id)
            assert tenant is not None
            await self._commit(
                conn,
                self._entry("tenant.create", body.tenant_id, details, tenant=None),
                self._entry("tenant.create", body.tenant_id, details, tenant=body.tenant_id),
            )
        await self._reload()
        return schemas.TenantCreated(tenant=tenant, admin=admin, api_key=new_key)

    async def tenants(self) -> schemas.TenantList:
        return schemas.TenantList(tenants=await self._repo.tenants())

    async def set_tenant_status(self, tenant_id: str, status: TenantStatus) -> schemas.Tenant:
        """Suspend (every key of the tenant stops working) or resume a tenant."""
        if status is TenantStatus.SUSPENDED and tenant_id == self._tenant:
            raise InvalidParameter("a superadmin cannot suspend its own tenant (it would lock itself out)")
        action = "tenant.suspend" if status is TenantStatus.SUSPENDED else "tenant.resume"
        async with self._repo.transaction() as conn:
            if not await directory.set_tenant_status(conn, tenant_id, status):
                raise NotFound(f"tenant {tenant_id!r} does not exist")
            tenant = await self._repo.tenant(conn, tenant_id)
            assert tenant is not None
            await self._commit(
                conn,
                self._entry(action, tenant_id, tenant=None),
                self._entry(action, tenant_id, tenant=tenant_id),
            )
        await self._reload()
        return tenant

    async def set_quota(self, tenant_id: str, body: schemas.QuotaUpdate) -> schemas.QuotaView:
        details = body.model_dump()
        async with self._repo.transaction() as conn:
            if await self._repo.tenant(conn, tenant_id) is None:
                raise NotFound(f"tenant {tenant_id!r} does not exist")
            await directory.set_quota(
                conn,
                tenant_id,
                Quota(
                    body.events_per_second, body.max_points, body.max_artifact_bytes, body.points_per_second
                ),
            )
            await self._commit(
                conn,
                self._entry("quota.set", tenant_id, details, tenant=None),
                self._entry("quota.set", tenant_id, details, tenant=tenant_id),
            )
        await self._reload()
        return await self._repo.quota(tenant_id)

    # --- the caller's tenant ---------------------------------------------------------------

    async def quota(self) -> schemas.QuotaView:
        return await self._repo.quota(self._tenant)

    async def create_principal(self, body: schemas.PrincipalCreate) -> schemas.Principal:
        taken = AlreadyExists(f"a {body.kind} named {body.name!r} already exists")
        try:
            async with self._repo.transaction() as conn:
                if await self._repo.principal_named(conn, self._tenant, body.kind, body.name):
                    raise taken
                principal_id = await directory.create_principal(conn, self._tenant, body.kind, body.name)
                row = await self._repo.principal(conn, self._tenant, principal_id)
                assert row is not None
                await self._commit(
                    conn,
                    self._entry("principal.create", principal_id, {"kind": body.kind, "name": body.name}),
                )
        except asyncpg.UniqueViolationError:  # a concurrent create of the same name won
            raise taken from None
        await self._reload()
        return schemas.Principal(**dict(row))

    async def principals(self) -> schemas.PrincipalList:
        return schemas.PrincipalList(principals=await self._repo.principals(self._tenant))

    async def disable_principal(self, principal_id: str) -> schemas.Changed:
        """Disable a user or service account: every key of it stops working."""
        if principal_id == self._principal.principal_id:
            raise InvalidParameter("an admin cannot disable itself")
        async with self._repo.transaction() as conn:
            await self._principal_row(conn, principal_id)
            changed = await directory.disable_principal(conn, principal_id)
            await self._commit(conn, self._entry("principal.disable", principal_id, {"changed": changed}))
        await self._reload()
        return schemas.Changed(changed=changed)

    async def create_key(self, principal_id: str, body: schemas.KeyCreate) -> schemas.NewKey:
        expires_at = (
            datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        )
        async with self._repo.transaction() as conn:
            row = await self._principal_row(conn, principal_id)
            if row["disabled_at"] is not None:
                raise InvalidParameter(f"principal {principal_id!r} is disabled")
            key = await directory.create_key(conn, principal_id, name=body.name, expires_at=expires_at)
            await self._commit(
                conn,
                self._entry(
                    "key.create",
                    key.key_id,
                    {
                        "principal_id": principal_id,
                        "name": body.name,
                        "expires_at": expires_at.isoformat() if expires_at else None,
                    },
                ),
            )
        await self._reload()
        return schemas.NewKey(
            key_id=key.key_id, principal_id=principal_id, api_key=key.token, expires_at=expires_at
        )

    async def keys(self, principal_id: str | None) -> schemas.KeyList:
        return schemas.KeyList(keys=await self._repo.keys(self._tenant, principal_id))

    async def revoke_key(self, key_id: str) -> schemas.KeyRevoked:
        """Revoke a key of the tenant (idempotent)."""
        try:
            key_id = normalize_key_id(key_id)
        except InvalidKey:
            raise self._not_found(f"key {key_id!r}") from None
        async with self._repo.transaction() as conn:
            if await self._repo.key(conn, self._tenant, key_id) is None:
                raise self._not_found(f"key {key_id!r}")
            revoked = await directory.revoke_key(conn, key_id)
            await self._commit(conn, self._entry("key.revoke", key_id, {"changed": revoked}))
        await self._reload()
        return schemas.KeyRevoked(key_id=key_id, revoked=revoked)

    async def _checked_grant(self, conn: PgConnection, body: schemas.GrantBody) -> Grant:
        await self._principal_row(conn, body.principal_id)
        if body.experiment_id:
            if body.role is Role.ADMIN:
                raise InvalidParameter(
                    "the admin role is tenant-wide: it cannot be narrowed to an experiment"
                )
            if await self._repo.experiment_name(conn, self._tenant, body.experiment_id) is None:
                raise self._not_found(f"experiment {body.experiment_id!r}")
        return Grant(self._tenant, body.principal_id, body.role, body.experiment_id or "")

    async def grant(self, body: schemas.GrantBody) -> schemas.Changed:
        async with self._repo.transaction() as conn:
            grant = await self._checked_grant(conn, body)
            changed = await directory.grant_role(conn, grant, self._principal.principal_id)
            await self._commit(
                conn,
                self._entry(
                    "grant.add",
                    body.principal_id,
                    {"role": body.role.value, "experiment_id": body.experiment_id, "changed": changed},
                ),
            )
        await self._reload()
        return schemas.Changed(changed=changed)

    async def grants(self, principal_id: str | None) -> schemas.GrantList:
        return schemas.GrantList(grants=await self._repo.grants(self._tenant, principal_id))

    async def revoke_grant(self, body: schemas.GrantBody) -> schemas.Changed:
        if (
            body.principal_id == self._principal.principal_id
            and body.role is Role.ADMIN
            and not body.experiment_id
        ):
            raise InvalidParameter("an admin cannot remove its own admin role (ask another admin)")
        async with self._repo.transaction() as conn:
            await self._principal_row(conn, body.principal_id)
            grant = Grant(self._tenant, body.principal_id, body.role, body.experiment_id or "")
            if not await directory.revoke_role(conn, grant):
                raise self._not_found("grant")
            await self._commit(
                conn,
                self._entry(
                    "grant.remove",
                    body.principal_id,
                    {"role": body.role.value, "experiment_id": body.experiment_id},
                ),
            )
        await self._reload()
        return schemas.Changed(changed=True)

    # --- tagging policy --------------------------------------------------------------------

    async def set_tagging_policy(self, body: schemas.TaggingPolicyBody) -> schemas.TaggingPolicyView:
        required = {k: sorted(set(v)) for k, v in body.required.items()}
        policy = TaggingPolicy(
            {k: tuple(v) for k, v in required.items()}, body.enforcement is schemas.Enforcement.REJECT
        )
        async with self._repo.transaction() as conn:
            await directory.set_tagging_policy(conn, self._tenant, policy)
            await self._commit(
                conn,
                self._entry(
                    "tagging_policy.set",
                    self._tenant,
                    {"required": required, "enforcement": body.enforcement.value},
                ),
            )
        await self._reload()
        return schemas.TaggingPolicyView(required=required, enforcement=body.enforcement)

    async def tagging_policy(self) -> schemas.TaggingPolicyView:
        policy = await self._repo.tagging_policy(self._tenant)
        if policy is None:
            raise NotFound("this tenant has no tagging policy")
        return policy

    async def clear_tagging_policy(self) -> schemas.Changed:
        async with self._repo.transaction() as conn:
            changed = await directory.clear_tagging_policy(conn, self._tenant)
            await self._commit(conn, self._entry("tagging_policy.clear", self._tenant, {"changed": changed}))
        await self._reload()
        return schemas.Changed(changed=changed)

    # --- sharing ---------------------------------------------------------------------------

    async def share(self, body: schemas.ShareCreate) -> schemas.Changed:
        """Share one experiment of the caller's tenant read-only with another tenant."""
        if body.experiment_id == DEFAULT_EXPERIMENT_ID:
            raise InvalidParameter("the Default experiment (id 0) cannot be shared")
        if body.grantee_tenant == self._tenant:
            raise InvalidParameter("an experiment cannot be shared with its own tenant")
        async with self._repo.transaction() as conn:
            if await self._repo.experiment_name(conn, self._tenant, body.experiment_id) is None:
                raise self._not_found(f"experiment {body.experiment_id!r}")
            if not await directory.tenant_ids(conn, [body.grantee_tenant]):
                raise self._not_found(f"tenant {body.grantee_tenant!r}")
            share = Share(self._tenant, body.experiment_id, body.grantee_tenant)
            changed = await directory.share_experiment(conn, share, self._principal.principal_id)
            await self._commit(conn, *self._share_entries("share.add", share, changed))
        await self._reload()
        return schemas.Changed(changed=changed)

    def _share_entries(self, action: str, share: Share, changed: bool) -> tuple[AuditEntry, AuditEntry]:
        """One entry for each side: the owner's log and the grantee's."""
        target = f"{share.owner_tenant}/{share.experiment_id}"
        details = {
            "owner_tenant": share.owner_tenant,
            "experiment_id": share.experiment_id,
            "grantee_tenant": share.grantee_tenant,
            "changed": changed,
        }
        return (
            self._entry(action, target, details),
            self._entry(action, target, details, tenant=share.grantee_tenant),
        )

    async def shares(self) -> schemas.ShareList:
        return await self._repo.shares(self._tenant)

    async def unshare(self, experiment_id: str, grantee_tenant: str) -> schemas.Changed:
        share = Share(self._tenant, experiment_id, grantee_tenant)
        async with self._repo.transaction() as conn:
            if not await directory.unshare_experiment(conn, share):
                raise self._not_found(f"share of experiment {experiment_id!r} with {grantee_tenant!r}")
            await self._commit(conn, *self._share_entries("share.remove", share, True))
        await self._reload()
        return schemas.Changed(changed=True)

    # --- audit -----------------------------------------------------------------------------

    async def audit(
        self,
        *,
        platform: bool,
        cursor: int | None,
        limit: int,
        outcome: str | None,
        action: str | None,
        actor: str | None,
    ) -> schemas.AuditPage:
        """Newest first; `next_cursor` continues with older entries."""
        entries = await self._repo.audit(
            None if platform else self._tenant,
            before=cursor,
            limit=limit + 1,
            outcome=outcome,
            action=action,
            actor=actor,
        )
        if len(entries) <= limit:
            return schemas.AuditPage(entries=entries)
        page = entries[:limit]
        return schemas.AuditPage(entries=page, next_cursor=page[-1].seq)
