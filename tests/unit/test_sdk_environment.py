"""Environment capture: packages, a stable environment hash, conda, CUDA and driver versions."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import runledger_sdk as rl
from runledger.events.codec import decode
from runledger.events.models import EnvironmentCapturedPayload, EventType, TagsSetPayload
from runledger_sdk import environment
from tests.support.sdk import memory_sdk

PACKAGES = {"numpy": "1.26.4", "Torch_Vision": "0.17.0", "requests": "2.31.0"}

NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def fake_executable(directory: Path, name: str, script: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def no_conda_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whatever this machine has: no conda env, no nvidia-smi, no torch unless a test adds them."""
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delitem(sys.modules, "torch", raising=False)


def test_hash_is_stable_and_follows_the_package_set() -> None:
    first = environment.capture_environment(lambda: PACKAGES)
    again = environment.capture_environment(lambda: dict(reversed(list(PACKAGES.items()))))
    assert first["environment_hash"] == again["environment_hash"]
    assert len(first["environment_hash"]) == 64
    upgraded = environment.capture_environment(lambda: {**PACKAGES, "numpy": "2.0.0"})
    added = environment.capture_environment(lambda: {**PACKAGES, "scipy": "1.13.0"})
    removed = environment.capture_environment(lambda: {"numpy": "1.26.4"})
    hashes = {first["environment_hash"], upgraded["environment_hash"], added["environment_hash"]}
    assert len(hashes | {removed["environment_hash"]}) == 4


def test_hash_is_the_documented_canonical_json() -> None:
    import hashlib
    import json
    import platform

    found = environment.capture_environment(lambda: PACKAGES)
    packages = {"numpy": "1.26.4", "requests": "2.31.0", "torch-vision": "0.17.0"}
    assert found["packages"] == packages and list(found["packages"]) == sorted(packages)
    canonical = json.dumps(
        {
            "python": platform.python_version(),
            "platform": f"{platform.system()}-{platform.machine()}",
            "packages": packages,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert found["environment_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert environment.environment_tags(found) == {"env.hash": found["environment_hash"][:12]}


def test_installed_packages_of_this_interpreter() -> None:
    packages = environment.installed_packages()
    assert packages["pydantic"] and packages["numpy"]
    assert list(packages) == sorted(packages)
    found = environment.capture_environment()
    assert found["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert found["cuda_version"] is None and found["driver_version"] is None
    assert found["conda_env"] is None and found["conda_export"] is None
    EnvironmentCapturedPayload.model_validate(found)


def test_nvidia_smi_versions(tmp_path: Path) -> None:
    fake_executable(tmp_path / "bin", "nvidia-smi", f"/bin/cat <<'EOF'\n{NVIDIA_SMI}EOF\n")
    found = environment.capture_environment(lambda: PACKAGES)
    assert found["driver_version"] == "550.54.15"
    assert found["cuda_version"] == "12.4"


def test_nvidia_smi_failing_or_hanging_is_absent(tmp_path: Path) -> None:
    fake_executable(tmp_path / "bin", "nvidia-smi", "exec /bin/sleep 5\n")
    found = environment.capture_environment(lambda: PACKAGES, nvidia_timeout=0.2)
    assert found["driver_version"] is None and found["cuda_version"] is None


def test_torch_cuda_only_when_torch_is_already_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_executable(tmp_path / "bin", "nvidia-smi", f"/bin/cat <<'EOF'\n{NVIDIA_SMI}EOF\n")
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(version=SimpleNamespace(cuda="12.1")))
    found = environment.capture_environment(lambda: PACKAGES)
    assert found["cuda_version"] == "12.1"  # what torch was built with wins over the driver's
    assert found["driver_version"] == "550.54.15"


def test_conda_only_with_conda_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conda = fake_executable(tmp_path / "bin", "conda", 'echo "name: $4"\necho "dependencies:"\n')
    monkeypatch.setenv("CONDA_EXE", str(conda))
    assert environment.capture_environment(lambda: PACKAGES)["conda_env"] is None  # no CONDA_PREFIX
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path / "envs" / "ml"))
    monkeypatch.delenv("CONDA_DEFAULT_ENV", raising=False)
    found = environment.capture_environment(lambda: PACKAGES)
    assert found["conda_env"] == "ml"
    assert found["conda_export"] == f"name: {tmp_path / 'envs' / 'ml'}\ndependencies:\n"
    EnvironmentCapturedPayload.model_validate(found)


def test_conda_export_timeout_keeps_the_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conda = fake_executable(tmp_path / "bin", "conda", "exec /bin/sleep 5\n")
    monkeypatch.setenv("CONDA_EXE", str(conda))
    monkeypatch.setenv("CONDA_PREFIX", "/opt/conda/envs/base")
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "base")
    found = environment.capture_environment(lambda: PACKAGES, conda_timeout=0.2)
    assert found["conda_env"] == "base" and found["conda_export"] is None


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    with memory_sdk(tmp_path, capture_environment=True) as memory:
        yield memory


def test_top_level_run_emits_environment_and_hash_tag(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        pass
    assert rl.flush(5)
    events = [d for d in (decode(r.value) for r in transport.records) if d.envelope.run_id == run.run_id]
    types = [e.envelope.type for e in events]
    assert types.count(EventType.ENVIRONMENT_CAPTURED) == 1
    assert types.index(EventType.ENVIRONMENT_CAPTURED) < types.index(EventType.STATUS_CHANGED)
    payload = next(e.payload for e in events if e.envelope.type is EventType.ENVIRONMENT_CAPTURED)
    assert isinstance(payload, EnvironmentCapturedPayload)
    assert payload.packages == environment.installed_packages()
    assert payload.environment_hash == environment.capture_environment()["environment_hash"]
    tags = [e.payload.tags for e in events if isinstance(e.payload, TagsSetPayload)]
    assert tags == [{"env.hash": payload.environment_hash[:12]}]
    assert run.tags["env.hash"] == payload.environment_hash[:12]
