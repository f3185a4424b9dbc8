"""Client side of admin commands that act on a running stack (`runledger replay`)."""

from __future__ import annotations

import json

import httpx

from runledger.config import Settings


def _base_url(settings: Settings, url: str | None) -> tuple[str, dict[str, str]]:
    headers: dict[str, str] = {}
    try:
        info = json.loads(settings.connection_file.read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("api_key"):
        headers["Authorization"] = f"Bearer {info['api_key']}"
    base = url or info.get("url")
    if not base:
        raise SystemExit(f"no --url given and no {settings.connection_file}: is `runledger up` running?")
    return str(base).rstrip("/"), headers


def replay(settings: Settings, url: str | None) -> int:
    """Run a replay on the server and print what it re-applied."""
    base, headers = _base_url(settings, url)
    response = httpx.post(f"{base}/api/v1/admin/replay", headers=headers, timeout=None)
    if response.status_code != 200:
        print(f"replay failed: {response.status_code} {response.text}")
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0
