"""The environment a run ran in: Python, platform, installed packages, conda, CUDA.

Captured when a top-level run starts (RUNLEDGER_CAPTURE_ENVIRONMENT, default on) and sent
as the run's EnvironmentCaptured event, with the tag `env.hash` (the first
ENV_HASH_TAG_LENGTH hex digits of `environment_hash`) so runs can be grouped by environment
(`GET /api/v1/runs?tag=env.hash:<hash>`).

`environment_hash` is the sha256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8)
of {"python": <python version>, "platform": "<os>-<machine>", "packages": {name: version}}.
The platform part is coarse on purpose (e.g. "Linux-x86_64"): a kernel update does not make
another environment; the event's `platform` field has the full description. Package names
are normalized (PEP 503: lower case, runs of "-_." as "-") and sorted.

Conda: only when CONDA_PREFIX is set, the environment's name and `conda env export` (with a
timeout; capped at CONDA_EXPORT_MAX_CHARS in the event, CONDA_FILE_MAX_CHARS in the file). CUDA: `cuda_version` is the CUDA that torch was built with when torch
is already imported (never imported here), else the CUDA version the driver reports;
`driver_version` comes from `nvidia-smi` when it is installed (with a timeout). Anything that
cannot be found is absent (null).

Besides the event (which the attribution service reads the packages from) the environment is
stored as artifacts of the run when the SDK uploads artifacts (runledger_sdk.artifacts):
ENVIRONMENT_ARTIFACT, the event's payload as indented JSON with sorted keys (the whole conda
export in it), and, in conda, CONDA_ARTIFACT, the `conda env export` as it printed it, which
`conda env create -f conda.yaml` recreates.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

NVIDIA_SMI_TIMEOUT_S = 5.0
CONDA_TIMEOUT_S = 8.0
CONDA_EXPORT_MAX_CHARS = 128 * 1024  # in the event: it must stay well under ~1 MB
CONDA_FILE_MAX_CHARS = 8 * 1024 * 1024  # in the conda.yaml artifact: only bounds memory
ENVIRONMENT_ARTIFACT = "runledger/environment.json"
CONDA_ARTIFACT = "runledger/conda.yaml"
ENV_HASH_TAG_LENGTH = 12

PackageSource = Callable[[], Mapping[str, str]]

_NAME_SEPARATORS = re.compile(r"[-_.]+")
_DRIVER_RE = re.compile(r"Driver Version:\s*([0-9][\w.\-]*)")
_CUDA_RE = re.compile(r"CUDA Version:\s*([0-9][\w.\-]*)")


def normalize_name(name: str) -> str:
    """A distribution name in PEP 503 normal form ("Foo_Bar" -> "foo-bar")."""
    return _NAME_SEPARATORS.sub("-", name).lower()


def installed_packages() -> dict[str, str]:
    """Installed distributions, name -> version, sorted by name (the first on sys.path wins)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except Exception:  # a broken dist-info directory: skip it, not the whole capture
            continue
        if name and version:
            found.setdefault(normalize_name(name), str(version))
    return dict(sorted(found.items()))


def platform_key() -> str:
    """The coarse platform hashed into environment_hash: "<os>-<machine>"."""
    return f"{platform.system()}-{platform.machine()}"


def environment_hash(python_version: str, platform_id: str, packages: Mapping[str, str]) -> str:
    """sha256 (hex) of the canonical JSON of python version, platform and packages."""
    canonical = json.dumps(
        {"python": python_version, "platform": platform_id, "packages": dict(packages)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _run(cmd: list[str], timeout: float) -> str | None:
    """stdout of a command, or None when it is missing, fails or runs out of time."""
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def nvidia_versions(timeout: float = NVIDIA_SMI_TIMEOUT_S) -> tuple[str | None, str | None]:
    """(driver version, driver's CUDA version) from `nvidia-smi`; Nones without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    out = _run([exe], timeout)
    if out is None:
        return None, None
    driver = _DRIVER_RE.search(out)
    cuda = _CUDA_RE.search(out)
    return (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)


def torch_cuda_version() -> str | None:
    """The CUDA torch was built with, only when torch is already imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    version = getattr(getattr(torch, "version", None), "cuda", None)
    return str(version) if version else None


def conda_info(
    timeout: float = CONDA_TIMEOUT_S, max_chars: int = CONDA_EXPORT_MAX_CHARS
) -> tuple[str | None, str | None]:
    """(environment name, `conda env export` cut at `max_chars`) of the active conda env;
    Nones outside conda."""
    prefix = os.environ.get("CONDA_PREFIX")
    if not prefix:
        return None, None
    name = os.environ.get("CONDA_DEFAULT_ENV") or os.path.basename(prefix.rstrip(os.sep)) or prefix
    exe = os.environ.get("CONDA_EXE") or shutil.which("conda")
    export = _run([exe, "env", "export", "-p", prefix], timeout) if exe else None
    if export is not None and len(export) > max_chars:
        export = export[:max_chars]
    return name, export


def capture_environment(
    package_source: PackageSource = installed_packages,
    *,
    nvidia_timeout: float = NVIDIA_SMI_TIMEOUT_S,
    conda_timeout: float = CONDA_TIMEOUT_S,
) -> dict[str, Any]:
    """The EnvironmentCaptured payload of this process (`package_source` is injectable)."""
    payload, _ = capture_environment_with_files(
        package_source, nvidia_timeout=nvidia_timeout, conda_timeout=conda_timeout
    )
    return payload


def capture_environment_with_files(
    package_source: PackageSource = installed_packages,
    *,
    nvidia_timeout: float = NVIDIA_SMI_TIMEOUT_S,
    conda_timeout: float = CONDA_TIMEOUT_S,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The EnvironmentCaptured payload and the artifacts of the environment (path -> bytes):
    ENVIRONMENT_ARTIFACT always, CONDA_ARTIFACT in conda when the export worked."""
    python_version = platform.python_version()
    packages = {normalize_name(k): str(v) for k, v in sorted(package_source().items())}
    packages = dict(sorted(packages.items()))
    driver, driver_cuda = nvidia_versions(nvidia_timeout)
    conda_env, full_export = conda_info(conda_timeout, CONDA_FILE_MAX_CHARS)
    conda_export = full_export[:CONDA_EXPORT_MAX_CHARS] if full_export is not None else None
    payload = {
        "python_version": python_version,
        "platform": platform.platform(),
        "packages": packages,
        "environment_hash": environment_hash(python_version, platform_key(), packages),
        "cuda_version": torch_cuda_version() or driver_cuda,
        "driver_version": driver,
        "conda_env": conda_env,
        "conda_export": conda_export,
    }
    files = {ENVIRONMENT_ARTIFACT: environment_document({**payload, "conda_export": full_export})}
    if full_export is not None:
        files[CONDA_ARTIFACT] = full_export.encode("utf-8")
    return payload, files


def environment_document(env: Mapping[str, Any]) -> bytes:
    """The environment as the ENVIRONMENT_ARTIFACT file: indented JSON, sorted keys, UTF-8."""
    return (json.dumps(dict(env), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def environment_tags(env: Mapping[str, Any]) -> dict[str, str]:
    """The tag that groups runs by environment: env.hash (short form)."""
    return {"env.hash": str(env["environment_hash"])[:ENV_HASH_TAG_LENGTH]}
