"""rl.seed_everything: reproducible random/numpy sequences, torch seeding, the `seed` param."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import runledger_sdk as rl
from runledger.events.codec import decode
from runledger.events.models import ParamsLoggedPayload
from runledger_sdk import seeds
from runledger_sdk.seeds import seed_everything
from tests.support.sdk import memory_sdk


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore os.environ and drop a seed a test left pending."""
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seeds.take_pending_seed()
    yield
    seeds.take_pending_seed()


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    with memory_sdk(tmp_path) as memory:
        yield memory


def draws() -> tuple[list[float], list[float]]:
    return [random.random() for _ in range(5)], np.random.rand(5).tolist()


def params_of(transport: rl.InMemoryTransport, run_id: str) -> dict[str, str]:
    assert rl.flush(5)
    out: dict[str, str] = {}
    for d in (decode(r.value) for r in transport.records):
        if d.envelope.run_id == run_id and isinstance(d.payload, ParamsLoggedPayload):
            out.update(d.payload.params)
    return out


def test_same_seed_same_sequences() -> None:
    assert seed_everything(1234) == 1234
    first = draws()
    seed_everything(1234)
    assert draws() == first
    seed_everything(4321)
    assert draws() != first
    assert os.environ["PYTHONHASHSEED"] == "4321"


def test_invalid_seeds() -> None:
    with pytest.raises(ValueError, match="seed must be in"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="seed must be in"):
        seed_everything(2**32)
    with pytest.raises(TypeError):
        seed_everything(1.5)  # type: ignore[arg-type]
    assert seed_everything(np.int64(7)) == 7


class FakeTorch:
    """Records what seed_everything asks of torch."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.cuda = SimpleNamespace(manual_seed_all=lambda s: self.calls.append(("cuda.manual_seed_all", s)))
        self.backends = SimpleNamespace(cudnn=SimpleNamespace(deterministic=False, benchmark=True))

    def manual_seed(self, seed: int) -> None:
        self.calls.append(("manual_seed", seed))

    def use_deterministic_algorithms(self, flag: bool) -> None:
        self.calls.append(("use_deterministic_algorithms", flag))


def test_torch_is_seeded_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(seeds, "_installed", lambda name: True)
    seed_everything(5)
    assert torch.calls == [("manual_seed", 5), ("cuda.manual_seed_all", 5)]
    assert torch.backends.cudnn.benchmark is True  # untouched without deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    seed_everything(6, deterministic=True)
    assert ("use_deterministic_algorithms", True) in torch.calls
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_torch_is_left_alone_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seeds, "_installed", lambda name: name != "torch")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    seed_everything(3, deterministic=True)
    assert "torch" not in sys.modules


def test_seed_is_logged_on_the_active_run(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        seed_everything(42)
    assert params_of(transport, run.run_id) == {"seed": "42"}
    assert "seed" in run.param_keys
    assert seeds.take_pending_seed() is None


def test_seed_before_the_run_is_logged_when_it_starts(transport: rl.InMemoryTransport) -> None:
    seed_everything(7)
    with rl.start_run() as run:
        pass
    with rl.start_run() as later:
        pass
    assert params_of(transport, run.run_id) == {"seed": "7"}
    assert params_of(transport, later.run_id) == {}  # once
