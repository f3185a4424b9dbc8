"""The SDK signs every event it forms: what it sends verifies, with the projector's fast path
and with the general one; no key online is a clear error; the tenant comes from the key."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import runledger_sdk as rl
from runledger.auth import signing
from runledger.auth.keys import generate_key
from runledger.auth.signing import verify_bytes as verify_signature
from runledger.events.codec import decode, encode, envelope_dict, producer
from runledger.events.models import EventType
from runledger_sdk.identity import ApiKeyError
from runledger_sdk.signing import Signer
from runledger_sdk.sync import sync_directory
from runledger_sdk.transport import Record
from runledger_sdk.transport_offline import OfflineTransport
from tests.support.sdk import QUIET, memory_sdk


def test_every_event_is_signed_once_and_verifies(tmp_path: Path) -> None:
    key = generate_key()
    with memory_sdk(tmp_path, api_key=key.token, tenant="acme") as memory:
        with rl.start_run(experiment="signed") as run:
            run.log_params({"lr": 0.1})
            for i in range(500):
                run.log_metric("loss", 1.0 / (i + 1))
        assert rl.flush(5)
    assert len(memory.records) >= 4
    for record in memory.records:
        event = orjson.loads(record.value)
        assert event["key_id"] == key.key_id and event["tenant_id"] == "acme"
        assert verify_signature(record.value, event["signature"], key.signing_key)  # bytes as sent
        assert signing.verify(event, key.signing_key)  # the general path: parsed and re-serialized
        decode(record.value)  # and a valid event
        tampered = record.value.replace(b'"acme"', b'"other"', 1)
        assert not verify_signature(tampered, event["signature"], key.signing_key)
        assert not verify_signature(record.value, event["signature"], generate_key().signing_key)


def test_online_without_a_key_fails_at_init_saying_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No key from the environment (e2e fixtures set one) or a connection.json nearby.
    for name in ("RUNLEDGER_API_KEY", "RUNLEDGER_TENANT", "RUNLEDGER_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ApiKeyError, match="RUNLEDGER_API_KEY"):
        rl.init(transport="http", url="http://127.0.0.1:9", spool_dir=tmp_path / "spool", **QUIET)
    with pytest.raises(ApiKeyError, match="not an API key"):
        rl.init(transport="http", url="http://127.0.0.1:9", api_key="nope", spool_dir=tmp_path / "s", **QUIET)


@pytest.fixture
def whoami() -> Iterator[tuple[str, list[str]]]:
    """A stand-in API answering GET /api/v1/whoami with tenant "from-key" for a Bearer token."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            ok = self.path == "/api/v1/whoami" and seen[-1].startswith("Bearer rlk_")
            body = json.dumps({"tenant_id": "from-key"} if ok else {"detail": "no"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_tenant_is_the_keys_unless_set(tmp_path: Path, whoami: tuple[str, list[str]]) -> None:
    url, seen = whoami
    key = generate_key()
    client = rl.init(transport="http", url=url, api_key=key.token, spool_dir=tmp_path / "a", **QUIET)
    assert client.settings.tenant == "from-key" and seen == [f"Bearer {key.token}"]
    client = rl.init(
        transport="http", url=url, api_key=key.token, tenant="mine", spool_dir=tmp_path / "b", **QUIET
    )
    assert client.settings.tenant == "mine" and len(seen) == 1  # set explicitly: not asked
    rl.shutdown(1)


def test_sync_signs_offline_events_written_without_a_key(tmp_path: Path) -> None:
    offline = OfflineTransport(tmp_path / "offline")
    raws = [
        encode(
            envelope_dict(
                tenant_id="default",
                type=EventType.RUN_STARTED,
                run_id=f"run{i}",
                experiment_id="0",
                producer=producer("tests"),
                payload={"name": "offline", "start_time": 1},
            )
        )
        for i in range(3)
    ]
    offline.send([Record(i, b"k", raw) for i, raw in enumerate(raws)], 1)
    offline.close(1)
    key = generate_key()
    memory = rl.InMemoryTransport()
    report = sync_directory(tmp_path / "offline", memory, sign=Signer(key).sign_raw)
    assert report.ok and report.sent == 3
    for record, raw in zip(memory.records, raws, strict=True):
        event = orjson.loads(record.value)
        assert event["key_id"] == key.key_id and signing.verify(event, key.signing_key)
        assert event["event_id"] == orjson.loads(raw)["event_id"]
    # Signing is deterministic: a resent event is the very same bytes.
    assert Signer(key).sign_raw(raws[0]) == memory.records[0].value
