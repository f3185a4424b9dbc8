"""The pure parts of the hostile-input defences: the dead-letter record keeps the exact bytes,
the DLQ tools select and key letters as documented, and the API's body guard tells an
unpaired surrogate escape from a paired one."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from services.api.body_guard import unpaired_surrogate
from services.ingest.dead_letters import letter, original_bytes, reason_class
from services.ingest.dlq_tools import DeadLetter, DlqError, parse_id, replay_key, select


@pytest.mark.parametrize(
    "raw",
    [b'{"a": 1}', b"", b"\xff\xfe not utf-8 \xed\xa0\x80", "caf\u00e9 \U0001f600".encode(), b"\x00\x01"],
)
def test_a_dead_letter_keeps_the_exact_bytes(raw: bytes) -> None:
    record = orjson.loads(orjson.dumps(letter(raw, "not valid JSON: x", "inc.topic.3", 7)))
    assert original_bytes(record) == raw
    assert record["size"] == len(raw) and record["offset"] == 7 and record["source"] == "inc.topic.3"
    assert isinstance(record["time"], int) and isinstance(record["value"], str)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert base64.b64decode(record["value_b64"]) == raw and "\ufffd" in record["value"]
    else:
        assert "value_b64" not in record and record["value"] == raw.decode()


def test_a_truncated_letter_says_so_and_cannot_be_replayed() -> None:
    raw = b"x" * 200_000
    record = letter(raw, "bad envelope: too big", "s", 1, truncate=True)
    assert record["truncated"] is True and record["size"] == len(raw)
    assert record["sha256"] == hashlib.sha256(raw).hexdigest() and len(record["value"]) < len(raw)
    assert original_bytes(record) is None
    assert reason_class(record["reason"]) == "bad envelope"


def _letter(partition: int, offset: int, reason: str, key: bytes | None, value: bytes) -> DeadLetter:
    return DeadLetter(partition, offset, 0, key, letter(value, reason, "s", offset))


def test_letters_are_selected_by_reason_prefix_or_id() -> None:
    letters = [
        _letter(0, 1, "permission denied: u_1 may not write", None, b"{}"),
        _letter(0, 2, "clock skew: occurred_at ...", None, b"{}"),
        _letter(1, 1, "permission denied: u_2 may not write", None, b"{}"),
    ]
    assert [x.id for x in select(letters, reason="permission denied")] == ["0:1", "1:1"]
    assert [x.id for x in select(letters, reason="permission denied: u_2")] == ["1:1"]
    assert [x.id for x in select(letters, ids=["1:1", "2"])] == ["1:1", "0:2"]
    with pytest.raises(DlqError, match="no dead letter 0:9"):
        select(letters, ids=["0:9"])
    with pytest.raises(DlqError):
        parse_id("p:q")
    assert parse_id("3:17") == (3, 17)


def test_a_replay_is_keyed_as_its_producer_keyed_it() -> None:
    event = orjson.dumps({"run_id": "r1", "experiment_id": "e1", "event_id": "x"})
    assert replay_key(_letter(0, 1, "r", b"kafka-key", event), event) == b"kafka-key"
    assert replay_key(_letter(0, 1, "r", None, event), event) == b"r1"
    only_experiment = orjson.dumps({"experiment_id": "e1"})
    assert replay_key(_letter(0, 1, "r", None, only_experiment), only_experiment) == b"e1"
    assert replay_key(_letter(0, 1, "r", None, b"\xff"), b"\xff") is None


@pytest.mark.parametrize(
    ("body", "unpaired"),
    [
        (b'{"name": "\\ud800"}', True),
        (b'{"name": "x\\udc00y"}', True),
        (b'{"\\uD83D": 1}', True),
        (b'{"name": "\\ud83d\\ude00"}', False),  # an escaped emoji: a proper pair
        (b'{"name": "\\\\ud800"}', False),  # an escaped backslash, then text
        (b'{"name": "plain"}', False),
        (b'{"name": "\\ud800', False),  # not JSON: the route's parser refuses it
    ],
)
def test_the_body_guard_finds_unpaired_surrogates(body: bytes, unpaired: bool) -> None:
    assert unpaired_surrogate(body) is unpaired


async def test_the_body_guard_refuses_json_bodies_over_the_limit() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from services.api.body_guard import GuardJsonBodies

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    app = GuardJsonBodies(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), max_bytes=100)
    json_type = {"content-type": "application/json"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        ok = await client.post("/echo", content=b"[" + b"1," * 48 + b"11]", headers=json_type)
        assert ok.status_code == 200 and ok.json() == {"size": 100}
        declared = await client.post("/echo", content=b"[" + b"1," * 60 + b"1]", headers=json_type)
        assert declared.status_code == 413
        assert declared.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "RUNLEDGER_API_MAX_JSON_BODY_BYTES" in declared.json()["message"]

        async def chunks() -> object:  # no Content-Length: counted while read
            for _ in range(30):
                yield b"[1,2,3,4,5]"

        streamed = await client.post("/echo", content=chunks(), headers=json_type)  # type: ignore[arg-type]
        assert streamed.status_code == 413
        raw = await client.post(
            "/echo", content=b"x" * 500, headers={"content-type": "application/octet-stream"}
        )
        assert raw.status_code == 200 and raw.json() == {"size": 500}  # uploads are not JSON
