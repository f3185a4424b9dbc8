"""Unit tests run without the SDK credentials that e2e fixtures put in the environment."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_sdk_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The e2e `stack` fixture sets these for the whole session (SDK subprocesses need them);
    # a unit test that runs after it must still see the defaults.
    for name in ("RUNLEDGER_API_KEY", "RUNLEDGER_TENANT"):
        monkeypatch.delenv(name, raising=False)
