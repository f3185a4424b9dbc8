"""SDK settings: RUNLEDGER_* variables, connection.json of `runledger up`, overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runledger_sdk.config import DEFAULT_API_URL, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RUNLEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RUNLEDGER_STATE_DIR", str(tmp_path / "state"))


def test_defaults_use_the_local_api(tmp_path: Path) -> None:
    s = load_settings()
    assert s.transport == "http" and s.url == DEFAULT_API_URL
    assert s.tenant == "default" and s.events_topic == "runledger.events.v1"
    assert s.spool_dir == Path("~/.runledger/spool").expanduser()


def test_env_vars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNLEDGER_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("RUNLEDGER_TENANT", "acme")
    monkeypatch.setenv("RUNLEDGER_SPOOL_DIR", str(tmp_path / "sp"))
    monkeypatch.setenv("RUNLEDGER_BATCH_MAX_POINTS", "5000")
    s = load_settings()
    assert s.transport == "kafka"  # auto: a bootstrap is known
    assert s.kafka_bootstrap == "k1:9092,k2:9092" and s.tenant == "acme"
    assert s.spool_dir == tmp_path / "sp" and s.batch_max_points == 5000


def test_explicit_http_even_with_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEDGER_KAFKA_BOOTSTRAP", "k1:9092")
    monkeypatch.setenv("RUNLEDGER_TRANSPORT", "http")
    monkeypatch.setenv("RUNLEDGER_URL", "https://runledger.example.com")
    monkeypatch.setenv("RUNLEDGER_API_KEY", "key-1")
    s = load_settings()
    assert s.transport == "http" and s.url == "https://runledger.example.com"
    assert s.api_key.get_secret_value() == "key-1"
    assert "key-1" not in repr(s)  # the key never shows up in logs


def test_connection_file_when_nothing_else_is_set(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "connection.json").write_text(
        json.dumps({"url": "http://127.0.0.1:8800", "kafka_bootstrap": "127.0.0.1:9999", "api_key": "k"})
    )
    s = load_settings()
    assert s.transport == "kafka" and s.kafka_bootstrap == "127.0.0.1:9999"
    assert s.url == "http://127.0.0.1:8800" and s.api_key.get_secret_value() == "k"
    # Anything set explicitly wins over the file, which is then ignored entirely.
    s = load_settings(url="http://elsewhere:1")
    assert s.transport == "http" and s.url == "http://elsewhere:1" and s.kafka_bootstrap == ""


def test_broken_connection_file_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "connection.json").write_text("{not json")
    assert load_settings().url == DEFAULT_API_URL


def test_overrides_win_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEDGER_TENANT", "from-env")
    assert load_settings(tenant="from-code").tenant == "from-code"
    with pytest.raises(TypeError, match="unknown setting"):
        load_settings(not_a_setting=1)
    with pytest.raises(ValueError):
        load_settings(transport="kafka")  # no bootstrap anywhere
    with pytest.raises(ValueError):
        load_settings(batch_max_points=0)
