"""Hostile input, generated from a seed: bad events for the topic, bad bodies for HTTP routes.

`HostileEvents` builds good runs (their exact expected contents) and, around them, bad
events of every category the pipeline must survive, each with the dead-letter reason
class (`reason_class` of services/ingest/dead_letters.py) it must be rejected with. A
`replayed` event is a copy of a good event already sent: it must not be dead-lettered,
only dropped as a duplicate (applied once).

`hostile_bodies` gives the HTTP counterpart: bodies that must get a 4xx with a message.

The seed comes from RUNLEDGER_TEST_SEED (default 20261127), so a reviewer can rerun every
hostile test with other input: `RUNLEDGER_TEST_SEED=7 pytest tests/e2e/test_hostile_input.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from runledger.auth import signing
from runledger.events.codec import envelope_dict, metric_columns, producer
from runledger.events.models import EventType
from tests.support.auth import Identity

_PRODUCER = producer("hostile-tests")
DEFAULT_SEED = 20261127

# The categories of the issue ("Hostile input"), each a generator below.
CATEGORIES = (
    "malformed_json",
    "wrong_types",
    "missing_fields",
    "unknown_types",
    "huge_payloads",
    "deep_nesting",
    "nan_keys",
    "invalid_utf8",
    "forged_signatures",
    "replayed",
    "clock_skew",
)
# No dead letter expected: a replay is a duplicate, dropped by event id.
NO_LETTER = ""


def hostile_seed() -> int:
    """The seed of every hostile test: RUNLEDGER_TEST_SEED, else a fixed default."""
    return int(os.environ.get("RUNLEDGER_TEST_SEED", DEFAULT_SEED))


@dataclass(frozen=True, slots=True)
class Message:
    """One message for the events topic; `expect` is the reason class of its dead letter
    (NO_LETTER for good events and replays)."""

    category: str
    key: bytes
    value: bytes
    expect: str = NO_LETTER


@dataclass
class GoodRun:
    """A run built only from good events, and what the projections must show for it."""

    run_id: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    keys: list[str]
    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)


@dataclass
class Signers:
    """The identities hostile events are signed with."""

    engineer: Identity  # may write the experiment: good events
    viewer: Identity  # same tenant, read only
    stranger: Identity  # engineer of another tenant


def _envelope(
    tenant: str,
    type_: EventType | str,
    payload: dict[str, Any],
    run_id: str | None,
    experiment_id: str | None,
) -> dict[str, Any]:
    env = envelope_dict(
        tenant_id=tenant,
        type=EventType.RUN_STARTED,
        run_id=run_id,
        experiment_id=experiment_id,
        producer=_PRODUCER,
        payload=payload,
    )
    env["type"] = type_.value if isinstance(type_, EventType) else type_
    return env


def _signed(identity: Identity, env: dict[str, Any]) -> bytes:
    """Topic bytes of `env` signed by `identity` (whatever the envelope holds)."""
    return signing.signed_bytes(dict(env), identity.key.key_id, identity.key.signing_key)


# Per metric column, values that make a batch invalid (for the other columns' length 2).
_BAD_COLUMNS: dict[str, list[Any]] = {
    "values": [["a", "b"], {"0": 1}, "not base64!", [[1], [2]], [1.0], None],
    "steps": [[1.5, 2.5], "not base64!", ["a", "b"], [1], [2**63, 0]],
    "key_index": [[-1, 0], [0.5, 0.5], [0, 5], "AAAA", [2**31, 0]],
    "timestamps": [[1.0, 2.0], ["now", "later"], "AAAA", [1, 2, 3]],
}


def _signed_deep(identity: Identity, env: dict[str, Any]) -> bytes:
    """Like _signed, for envelopes nested deeper than orjson writes (the standard library's
    json does): the same canonical layout, so the signature verifies."""
    env = {**env, "key_id": identity.key.key_id}
    env.pop("signature", None)
    body = json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    mac = hmac.new(identity.key.signing_key, body, hashlib.sha256).hexdigest()
    return body[:-1] + b',"signature":"' + mac.encode() + b'"}'


def _nested(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


class HostileEvents:
    """Good runs and hostile messages around them, all from one seed."""

    def __init__(
        self, seed: int, signers: Signers, experiment_id: str, *, huge_bytes: int = 1_500_000
    ) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.signers = signers
        self.tenant = signers.engineer.tenant_id
        self.experiment_id = experiment_id
        self.huge_bytes = huge_bytes
        self.runs: list[GoodRun] = []
        self._good_sent: list[Message] = []
        self._huge_sent = 0
        # Point timestamps near now: a retention TTL may drop points stamped long ago.
        self.now_ms = int(datetime.now(UTC).timestamp() * 1000)

    # --- good events ------------------------------------------------------------------

    def good_runs(self, count: int, batches: int, steps_per_batch: int) -> list[GoodRun]:
        """`count` runs: started, params, `batches` metric batches, tags (some with a tolerated
        clock offset), finished."""
        rng = self.rng
        for i in range(count):
            run_id = uuid.UUID(int=rng.getrandbits(128)).hex
            run = GoodRun(
                run_id=run_id,
                name=f"hostile-{i}-{run_id[:6]}",
                params={f"p{j}": str(rng.random()) for j in range(rng.randint(1, 6))},
                tags={"team": rng.choice(["a", "b", "c"]), "i": str(i)},
                keys=rng.sample(["loss", "acc", "val/loss", "lr", "grad_norm"], 2),
            )
            me = self.signers.engineer
            start = self._event(
                EventType.RUN_STARTED, run, {"name": run.name, "start_time": 1_700_000_000_000}
            )
            run.messages.append(self._good(run, start))
            run.messages.append(
                self._good(run, self._event(EventType.PARAMS_LOGGED, run, {"params": run.params}))
            )
            for b in range(batches):
                first = b * steps_per_batch
                steps = np.repeat(np.arange(first, first + steps_per_batch, dtype=np.int64), len(run.keys))
                key_index = np.tile(np.arange(len(run.keys), dtype=np.int32), steps_per_batch)
                values = self.np_rng.random(len(steps))
                if b == 0:  # a NaN value is a legal point, not a hostile one
                    values[0] = np.nan
                payload = metric_columns(run.keys, key_index, values, steps, self.now_ms + steps)
                run.messages.append(self._good(run, self._event(EventType.METRICS_LOGGED, run, payload)))
                run.steps.extend(range(first, first + steps_per_batch))
                for k, key in enumerate(run.keys):
                    run.values.setdefault(key, []).extend(values[k :: len(run.keys)].tolist())
            # Inside the tolerated clock window: one hour ahead, three years late.
            for offset, tag in ((timedelta(hours=1), "ahead"), (timedelta(days=-3 * 365), "late")):
                env = self._event_env(EventType.TAGS_SET, run, {"tags": {f"clock.{tag}": "ok"}})
                env["occurred_at"] = (datetime.now(UTC) + offset).isoformat(timespec="milliseconds")
                run.messages.append(self._good(run, _signed(me, env)))
                run.tags[f"clock.{tag}"] = "ok"
            run.messages.append(
                self._good(run, self._event(EventType.TAGS_SET, run, {"tags": dict(run.tags)}))
            )
            finished = {"status": "FINISHED", "end_time": 1_700_000_100_000}
            run.messages.append(self._good(run, self._event(EventType.STATUS_CHANGED, run, finished)))
            self.runs.append(run)
        return self.runs

    def _event_env(self, type_: EventType, run: GoodRun, payload: dict[str, Any]) -> dict[str, Any]:
        return _envelope(self.tenant, type_, payload, run.run_id, self.experiment_id)

    def _event(self, type_: EventType, run: GoodRun, payload: dict[str, Any]) -> bytes:
        return _signed(self.signers.engineer, self._event_env(type_, run, payload))

    def _good(self, run: GoodRun, value: bytes) -> Message:
        message = Message("good", run.run_id.encode(), value)
        self._good_sent.append(message)
        return message

    # --- hostile events ---------------------------------------------------------------

    def hostile(self, count: int) -> list[Message]:
        """`count` messages to dead-letter, every category at least once, plus one replayed
        good event per 20 of them, in random order."""
        makers: dict[str, Callable[[], Message]] = {
            "malformed_json": self._malformed_json,
            "wrong_types": self._wrong_types,
            "missing_fields": self._missing_fields,
            "unknown_types": self._unknown_type,
            "huge_payloads": self._huge,
            "deep_nesting": self._deep_nesting,
            "nan_keys": self._nan_keys,
            "invalid_utf8": self._invalid_utf8,
            "forged_signatures": self._forged,
            "clock_skew": self._clock_skew,
        }
        assert set(makers) | {"replayed"} == set(CATEGORIES)
        weights = {name: 1.0 for name in makers} | {"huge_payloads": 0.25}
        names = list(makers)
        picks = names + self.rng.choices(names, [weights[n] for n in names], k=max(0, count - len(names)))
        out = [makers[name]() for name in picks] + [self._replayed() for _ in range(max(1, count // 20))]
        self.rng.shuffle(out)
        return out

    def interleave(self, hostile: list[Message]) -> list[Message]:
        """Every run's good messages (in their order) merged at random positions into `hostile`;
        each replay lands somewhere after the message it repeats (before it, it would just be
        that message arriving early)."""
        replays = [m for m in hostile if m.category == "replayed"]
        others = iter([m for m in hostile if m.category != "replayed"])
        queues = [list(run.messages) for run in self.runs]
        total_good = sum(len(q) for q in queues)
        remaining_bad = len(hostile) - len(replays)
        merged: list[Message] = []
        while total_good or remaining_bad:
            if total_good and self.rng.random() < total_good / (total_good + remaining_bad):
                queue = self.rng.choice([q for q in queues if q])
                merged.append(queue.pop(0))
                total_good -= 1
            else:
                merged.append(next(others))
                remaining_bad -= 1
        at = {id(m.value): i for i, m in enumerate(merged) if m.category == "good"}
        placed = [(float(i), m) for i, m in enumerate(merged)]
        placed += [(self.rng.uniform(at[id(m.value)] + 0.01, len(merged)), m) for m in replays]
        placed.sort(key=lambda pair: pair[0])
        return [m for _, m in placed]

    def _run(self) -> GoodRun:
        return self.rng.choice(self.runs)

    def _template(self) -> tuple[GoodRun, dict[str, Any]]:
        """A plausible envelope for a good run (fresh event id): params, tags or a metric batch."""
        run = self._run()
        kind = self.rng.randrange(3)
        if kind == 0:
            payload: dict[str, Any] = {"params": {f"h{self.rng.randrange(10**6)}": "x"}}
            return run, self._event_env(EventType.PARAMS_LOGGED, run, payload)
        if kind == 1:
            payload = {"tags": {f"hostile.{self.rng.randrange(10**6)}": "x"}}
            return run, self._event_env(EventType.TAGS_SET, run, payload)
        payload = {
            "keys": ["hostile"],
            "key_index": [0, 0],
            "values": [1.0, 2.0],
            "steps": [10**6, 10**6 + 1],
            "timestamps": [1, 2],
        }
        return run, self._event_env(EventType.METRICS_LOGGED, run, payload)

    def _msg(self, category: str, run: GoodRun | None, value: bytes, expect: str) -> Message:
        key = (run.run_id if run else uuid.uuid4().hex).encode()
        return Message(category, key, value, expect)

    def _signed_bad(self, category: str, run: GoodRun, env: dict[str, Any], expect: str) -> Message:
        return self._msg(category, run, _signed(self.signers.engineer, env), expect)

    def _malformed_json(self) -> Message:
        run, env = self._template()
        good = _signed(self.signers.engineer, env)
        choice = self.rng.randrange(7)
        if choice == 0:  # cut short
            return self._msg(
                "malformed_json", run, good[: self.rng.randrange(1, len(good) - 1)], "not valid JSON"
            )
        if choice == 1:
            return self._msg("malformed_json", run, good[:-1] + b",}", "not valid JSON")
        if choice == 2:
            return self._msg("malformed_json", run, good.replace(b'"', b"'"), "not valid JSON")
        if choice == 3:
            return self._msg(
                "malformed_json", run, self.rng.randbytes(self.rng.randrange(1, 300)) + b"{", "not valid JSON"
            )
        if choice == 4:
            return self._msg("malformed_json", run, good + good, "not valid JSON")
        if choice == 5:
            value = self.rng.choice(
                [b"[1, 2, 3]", b'"an event"', b"42", b"null", b"true", b"[" + good + b"]"]
            )
            return self._msg("malformed_json", run, value, "event is not a JSON object")
        return self._msg("malformed_json", run, b"", "empty message")

    def _wrong_types(self) -> Message:
        if self.rng.random() < 0.1:
            return self._out_of_range()
        run, env = self._template()
        wrong: list[tuple[str, Any]] = [
            ("event_id", self.rng.choice([12345, [], "not-a-uuid", None])),
            ("tenant_id", self.rng.choice([7, {}, "", "tenant with spaces", "x" * 65])),
            ("type", self.rng.choice([3, ["run.started"], None])),
            (
                "occurred_at",
                self.rng.choice(["yesterday", [], {}, "2025-13-45T99:00:00Z", "2024-01-01T00:00:00"]),
            ),
            ("producer", self.rng.choice(["sdk", 1, None])),
            ("payload", self.rng.choice(["{}", [1], 5, None])),
            ("schema_version", self.rng.choice(["one", 0, -3])),
            ("run_id", self.rng.choice([5, [], "../etc/passwd"])),
        ]
        field_name, value = self.rng.choice(wrong)
        if self.rng.random() < 0.4:  # a payload field of the wrong type instead
            type_ = env["type"]
            payload = env["payload"]
            if type_ == "run.params_logged":
                payload["params"] = self.rng.choice([{"lr": 0.1}, {"lr": None}, ["lr"], "lr=0.1"])
            elif type_ == "run.tags_set":
                payload["tags"] = self.rng.choice([{"t": 1}, {"t": ["x"]}, "t"])
            else:
                column = self.rng.choice(sorted(_BAD_COLUMNS))
                payload[column] = self.rng.choice(_BAD_COLUMNS[column])
            return self._signed_bad("wrong_types", run, env, f"bad {type_} payload")
        env[field_name] = value
        return self._signed_bad("wrong_types", run, env, "bad envelope")

    def _out_of_range(self) -> Message:
        """Integers JSON and the models accept but a 64-bit column cannot hold."""
        run = self._run()
        big = self.rng.choice([2**63, 2**64 - 1, 2**63 + self.rng.randrange(10**6)])
        choice = self.rng.randrange(3)
        if choice == 0:
            type_, payload = EventType.RUN_STARTED, {"name": "overflow", "start_time": big}
            run_id = uuid.UUID(int=self.rng.getrandbits(128)).hex  # a run of its own
        elif choice == 1:
            type_, payload, run_id = (
                EventType.STATUS_CHANGED,
                {"status": "KILLED", "end_time": big},
                run.run_id,
            )
        else:
            type_, payload, run_id = (
                EventType.MODEL_VERSION_REGISTERED,
                {"model_name": "m", "version": big},
                None,
            )
        env = _envelope(self.tenant, type_, payload, run_id, self.experiment_id)
        return self._signed_bad("wrong_types", run, env, "rejected by metadata store")

    def _missing_fields(self) -> Message:
        run, env = self._template()
        if self.rng.random() < 0.5:
            name = self.rng.choice(
                [
                    "event_id",
                    "tenant_id",
                    "type",
                    "occurred_at",
                    "producer",
                    "payload",
                    "run_id",
                    "experiment_id",
                ]
            )
            del env[name]
            return self._signed_bad("missing_fields", run, env, "bad envelope")
        type_ = env["type"]
        payload = env["payload"]
        del payload[self.rng.choice(sorted(payload))]
        return self._signed_bad("missing_fields", run, env, f"bad {type_} payload")

    def _unknown_type(self) -> Message:
        run, env = self._template()
        env["type"] = self.rng.choice(
            ["run.teleported", "RUN.STARTED", "", "experiment.exploded", "run.params_logged.v2"]
        )
        return self._signed_bad("unknown_types", run, env, "bad envelope")

    def _huge(self) -> Message:
        run, env = self._template()
        # A few messages of megabytes; the others tens of kilobytes, all over a field's limit.
        size = self.huge_bytes if self._huge_sent % 25 == 0 else self.rng.randrange(10_000, 60_000)
        self._huge_sent += 1
        type_ = env["type"]
        if type_ == "run.params_logged":
            env["payload"]["params"] = {"big": "p" * size}
        elif type_ == "run.tags_set":
            env["payload"]["tags"] = {"big": "t" * size}
        else:
            env["payload"]["keys"] = ["k" * size]
        return self._signed_bad("huge_payloads", run, env, f"bad {type_} payload")

    def _deep_nesting(self) -> Message:
        if self.rng.random() < 0.15:  # parses, validates, but too deep to store as JSON
            run = self._run()
            evidence = {"deep": _nested(self.rng.randrange(260, 900))}
            payload = {"key": "loss", "step": 1, "kind": "spike", "severity": 1.0, "evidence": evidence}
            env = self._event_env(EventType.ANOMALY_DETECTED, run, payload)
            raw = _signed_deep(self.signers.engineer, env)
            return self._msg("deep_nesting", run, raw, "rejected by metadata store")
        run, env = self._template()
        if self.rng.random() < 0.5:  # deeper than any JSON parser should follow
            env["payload"]["deep"] = "@@DEEP@@"
            raw = _signed(self.signers.engineer, env)
            depth = self.rng.randrange(1100, 20_000)
            deep = b"[" * depth + b"1" + b"]" * depth
            return self._msg("deep_nesting", run, raw.replace(b'"@@DEEP@@"', deep), "not valid JSON")
        type_ = env["type"]
        nested = _nested(self.rng.randrange(50, 250))
        key = {"run.params_logged": "params", "run.tags_set": "tags"}.get(type_, "values")
        env["payload"][key] = {"deep": nested} if key != "values" else [nested]
        return self._signed_bad("deep_nesting", run, env, f"bad {type_} payload")

    def _nan_keys(self) -> Message:
        run = self._run()
        choice = self.rng.randrange(4)
        if choice == 0:  # JSON has no NaN: a bare literal is not JSON
            literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan"])
            env = self._event_env(
                EventType.METRICS_LOGGED,
                run,
                {"keys": ["x"], "key_index": [0], "values": "@@V@@", "steps": [1], "timestamps": [1]},
            )
            raw = _signed(self.signers.engineer, env).replace(b'"@@V@@"', b"[" + literal + b"]")
            return self._msg("nan_keys", run, raw, "not valid JSON")
        bad_key = self.rng.choice(["", "../NaN", "/NaN", "na\tn", "x" * 251, "a/../b", "key[NaN]", "ключ?"])
        if choice == 1:
            payload: dict[str, Any] = {
                "keys": [bad_key],
                "key_index": [0],
                "values": ["NaN"],
                "steps": [1],
                "timestamps": [1],
            }
            return self._signed_bad(
                "nan_keys",
                run,
                self._event_env(EventType.METRICS_LOGGED, run, payload),
                "bad run.metrics_logged payload",
            )
        if choice == 2:
            env = self._event_env(EventType.PARAMS_LOGGED, run, {"params": {bad_key: "NaN"}})
            return self._signed_bad("nan_keys", run, env, "bad run.params_logged payload")
        column = self.rng.choice(["steps", "key_index", "timestamps"])
        payload = {"keys": ["x"], "key_index": [0], "values": [1.0], "steps": [1], "timestamps": [1]}
        payload[column] = [self.rng.choice(["NaN", "Infinity", 1e300, None])]
        env = self._event_env(EventType.METRICS_LOGGED, run, payload)
        return self._signed_bad("nan_keys", run, env, "bad run.metrics_logged payload")

    def _invalid_utf8(self) -> Message:
        run, env = self._template()
        raw = _signed(self.signers.engineer, env)
        bad = self.rng.choice(
            [
                b"\xff",
                b"\xc3\x28",
                b"\xed\xa0\x80",
                b"\xc0\xaf",
                b"\xe2\x82",
                b"\xf8\x88\x80\x80\x80",
                b"\x80",
            ]
        )
        choice = self.rng.randrange(4)
        if choice == 0:  # inside a string value
            at = raw.index(b'"producer"') + 1
            return self._msg("invalid_utf8", run, raw[:at] + bad + raw[at:], "not valid JSON")
        if choice == 1:  # a lone surrogate, escaped
            return self._msg(
                "invalid_utf8", run, raw.replace(b'"sdk":"', b'"sdk":"\\ud800', 1), "not valid JSON"
            )
        if choice == 2:  # another encoding altogether
            return self._msg("invalid_utf8", run, raw.decode().encode("utf-16"), "not valid JSON")
        # An escaped NUL: valid JSON, but no text column can hold it.
        return self._msg(
            "invalid_utf8", run, raw.replace(b'"sdk":"', b'"sdk":"\\u0000', 1), "NUL character in event"
        )

    def _forged(self) -> Message:
        run, env = self._template()
        s = self.signers
        choice = self.rng.randrange(7)
        if choice == 0:  # changed after signing
            raw = _signed(s.engineer, env)
            tampered = raw.replace(b'"hostile-tests"', b'"hostile-tampered"', 1)
            return self._msg("forged_signatures", run, tampered, "signature mismatch")
        if choice == 1:
            env["key_id"] = s.engineer.key.key_id
            env["signature"] = f"{self.rng.getrandbits(256):064x}"
            return self._msg("forged_signatures", run, orjson.dumps(env), "signature mismatch")
        if choice == 2:
            return self._msg("forged_signatures", run, orjson.dumps(env), "unsigned event")
        if choice == 3:  # a key id nobody issued
            env["key_id"] = f"{self.rng.getrandbits(64):016x}"
            env["signature"] = signing.signature(env, b"guessed")
            return self._msg("forged_signatures", run, orjson.dumps(env), "unknown key")
        if choice == 4:  # another tenant's key signing for this tenant
            return self._msg("forged_signatures", run, _signed(s.stranger, env), "tenant mismatch")
        if choice == 5:  # this tenant's key signing for another tenant
            env["tenant_id"] = s.stranger.tenant_id
            return self._msg("forged_signatures", run, _signed(s.engineer, env), "tenant mismatch")
        return self._msg("forged_signatures", run, _signed(s.viewer, env), "permission denied")

    def _replayed(self) -> Message:
        original = self.rng.choice(self._good_sent)
        return Message("replayed", original.key, original.value, NO_LETTER)

    def _clock_skew(self) -> Message:
        run, env = self._template()
        when = self.rng.choice(
            [
                datetime.now(UTC) + timedelta(days=self.rng.randrange(2, 4000)),
                datetime(9999, 12, 31, tzinfo=UTC),
                datetime(1999, 12, 31, 23, 59, tzinfo=UTC),
                datetime(1970, 1, 1, tzinfo=UTC),
                datetime(1, 1, 1, tzinfo=UTC),
            ]
        )
        env["occurred_at"] = when.isoformat(timespec="milliseconds")
        return self._signed_bad("clock_skew", run, env, "clock skew")


# --- HTTP bodies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Body:
    """A hostile request body and the Content-Type it is sent with."""

    category: str
    content: bytes
    content_type: str = "application/json"


def hostile_bodies(seed: int, *, huge_bytes: int = 12_000_000) -> Iterator[Body]:
    """One of each hostile body category (randomised by `seed`)."""
    rng = random.Random(seed)
    yield Body("malformed_json", rng.choice([b'{"name": "x",', b"{'a': 1}", b"{]", b'{"a":1}{"b":2}']))
    yield Body("empty", b"")
    yield Body("not_object", rng.choice([b"[]", b"42", b'"text"', b"null"]))
    yield Body(
        "wrong_types",
        orjson.dumps(rng.choice([{"name": 5}, {"params": "lr=1"}, {"tags": [1, 2]}, {"metrics": 3}])),
    )
    yield Body("missing_fields", b"{}")
    yield Body("unknown_fields", orjson.dumps({"no_such_field_" + str(rng.randrange(1000)): 1}))
    yield Body("huge", b'{"name": "' + b"x" * huge_bytes + b'"}')
    depth = rng.randrange(1100, 30_000)
    yield Body("deep_nesting", b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
    yield Body("shallow_nesting", orjson.dumps({"name": _nested(200)}))
    yield Body("nan", rng.choice([b'{"value": NaN}', b'{"value": Infinity}', b'{"NaN": NaN}']))
    yield Body(
        "invalid_utf8", b'{"name": "' + rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"\xc3\x28"]) + b'"}'
    )
    yield Body("lone_surrogate", b'{"name": "\\ud800"}')
    yield Body("nul", b'{"name": "a\\u0000b", "key": "a\\u0000b"}')
    yield Body(
        "big_numbers", b'{"start_time": 1' + b"0" * 400 + b', "value": 1e999, "step": -99999999999999999999}'
    )
    yield Body("wrong_content_type", b"name=x&value=1", "application/x-www-form-urlencoded")
