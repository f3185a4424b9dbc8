"""Who the SDK logs as: the API key it signs with, and the tenant that key belongs to."""

from __future__ import annotations

import logging

import httpx

from runledger.auth.keys import ApiKey, InvalidKey, parse_key
from runledger_sdk.config import SdkSettings

log = logging.getLogger("runledger_sdk")

_HOW_TO = (
    "set RUNLEDGER_API_KEY=rlk_<id>_<secret> (or rl.init(api_key=...)): `runledger up` prints one"
    " and keeps it in <state dir>/connection.json, an admin creates more with"
    " `runledger admin keys create`; or log offline with RUNLEDGER_MODE=offline"
)


class ApiKeyError(ValueError):
    """No usable API key for an online client, or the API refused it."""


def signing_key(settings: SdkSettings, required: bool) -> ApiKey | None:
    """The configured key; ApiKeyError when it is malformed, or missing while `required`."""
    token = settings.api_key.get_secret_value()
    if not token:
        if required:
            raise ApiKeyError(f"RunLedger: no API key configured; every event is signed with one: {_HOW_TO}")
        return None
    try:
        return parse_key(token)
    except InvalidKey as exc:
        raise ApiKeyError(f"RunLedger: RUNLEDGER_API_KEY is not an API key ({exc}): {_HOW_TO}") from None


def key_tenant(settings: SdkSettings, key: ApiKey) -> str | None:
    """The key's tenant from GET {url}/api/v1/whoami; None when the API cannot say (down, old)."""
    url = settings.url.rstrip("/") + "/api/v1/whoami"
    try:
        response = httpx.get(
            url, headers={"Authorization": f"Bearer {key.token}"}, timeout=min(settings.send_timeout_s, 5.0)
        )
    except httpx.HTTPError as exc:
        log.warning(
            "RunLedger: cannot ask %s for the key's tenant (%s); using tenant %r", url, exc, settings.tenant
        )
        return None
    if response.status_code in (401, 403):
        raise ApiKeyError(f"RunLedger: the API refused the API key ({response.status_code}): {_HOW_TO}")
    if response.status_code != 200:
        log.warning("RunLedger: %s answered %d; using tenant %r", url, response.status_code, settings.tenant)
        return None
    tenant = response.json().get("tenant_id")
    return tenant if isinstance(tenant, str) and tenant else None


def identify(settings: SdkSettings, online: bool) -> tuple[SdkSettings, ApiKey | None]:
    """The settings with the tenant decided, and the key to sign with (required `online`)."""
    key = signing_key(settings, required=online)
    if online and key is not None and not settings.tenant_explicit and settings.url:
        tenant = key_tenant(settings, key)
        if tenant is not None and tenant != settings.tenant:
            resolved = settings.model_copy(update={"tenant": tenant})
            return resolved, key
    return settings, key
