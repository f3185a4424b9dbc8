"""Artifacts: files of a run, uploaded to the RunLedger API's content-addressed store.

    run.log_artifact("confusion.png")                    # -> confusion.png
    run.log_artifact("ckpt/epoch3.pt", "checkpoints")    # -> checkpoints/epoch3.pt
    run.log_artifacts("outputs/", "outputs")             # every file below outputs/

Each file is sent with `PUT {RUNLEDGER_URL}/api/v1/runs/{run_id}/artifacts/{path}` (raw
bytes, streamed from disk); the API stores the bytes once per sha256, logs the run's
ArtifactLogged event itself, and serves the file at the same URL (GET). The SDK hashes the
file while it streams it and checks the digest the API answers, so a file rewritten during
the upload is an error, not a silent mismatch.

Where uploads go (RUNLEDGER_UPLOAD_ARTIFACTS):

- `auto` (default): to the API at RUNLEDGER_URL when the SDK is online and knows that URL,
  whichever transport carries the events (Kafka clients get the URL from the state dir's
  connection.json, or RUNLEDGER_URL). A Kafka-only client (a bootstrap but no URL), offline
  mode, and clients built on a transport object (`rl.init(transport=InMemoryTransport())`)
  upload nothing.
- `api`: to RUNLEDGER_URL whenever online, also with a transport object.
- `off`: never.

Without uploads, `log_artifact` raises ArtifactsUnavailable; what the SDK records by itself
(the code diff, the environment) falls back to the events (see runledger_sdk.run_context).

The API only accepts files of runs it knows: an upload right after `start_run` may reach it
before the run's RunStarted event is projected, so a 404 is retried for up to
RUN_WAIT_S. Connection errors fail at once (the SDK's own captures then fall back to the
events instead of holding up the end of the run); 5xx, 408 and 429 (Retry-After honoured)
are retried RUNLEDGER_HTTP_RETRIES times.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from runledger_sdk.config import SdkSettings

log = logging.getLogger("runledger_sdk.artifacts")

# What the SDK logs by itself lives under this prefix (runledger/code/diff.patch, ...).
SDK_PREFIX = "runledger/"
MAX_PATH_CHARS = 1024  # the API's (and run.artifact_logged's) limit
RUN_WAIT_S = 8.0  # below run_context.CONTEXT_WAIT_S, so a capture still ends in time
CHUNK = 1 << 20

_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class ArtifactUploadError(RuntimeError):
    """The API did not take an artifact (refused it, or could not be reached)."""


class ArtifactsUnavailable(ArtifactUploadError):
    """This client has nowhere to upload to (offline, Kafka-only, or RUNLEDGER_UPLOAD_ARTIFACTS=off)."""


@dataclass(frozen=True, slots=True)
class LoggedArtifact:
    """A file stored for a run: its path in the run, its size and its content digest."""

    path: str
    size: int
    digest: str  # "sha256:<hex>"


def check_artifact_path(path: str) -> str:
    """`path` if the API will take it as a run-relative artifact path; ValueError otherwise.

    The API's rules (services/api/artifacts/paths.py), checked here so a bad path fails in
    the caller's line rather than as a 400 later.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("the artifact path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise ValueError(f"the artifact path is longer than {MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":") or "\x00" in path:
        raise ValueError(f"artifact paths are relative to the run and '/'-separated: {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"empty, '.' or '..' segment in artifact path {path!r}")
    return path


def join_path(directory: str | None, name: str) -> str:
    """`directory/name` ('' or None: `name`), checked."""
    directory = (directory or "").strip("/")
    return check_artifact_path(f"{directory}/{name}" if directory else name)


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """("sha256:<hex>", size) of a local file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size


def bytes_digest(data: bytes) -> str:
    """ "sha256:<hex>" of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_below(root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(POSIX path relative to `root`, file) of every regular file below a directory, sorted;
    for a file: [(its name, it)]. Symlinked directories are not followed."""
    base = Path(root)
    if base.is_file():
        return [(base.name, base)]
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a file or a directory")
    found: list[tuple[str, Path]] = []
    for directory, dirs, names in os.walk(base):
        dirs.sort()
        for name in sorted(names):
            file = Path(directory, name)
            if file.is_file():
                found.append((file.relative_to(base).as_posix(), file))
    return sorted(found)


class ArtifactUploader:
    """Uploads files of runs to one RunLedger API (thread-safe: httpx.Client is)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        attempts: int = 3,
        run_wait_s: float = RUN_WAIT_S,
    ) -> None:
        self.base = url.rstrip("/") + "/api/v1/runs/"
        headers = {"User-Agent": "runledger-python-sdk", "Content-Type": "application/octet-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s)
        )
        self._attempts = max(1, attempts)
        self.run_wait_s = run_wait_s

    def url_of(self, run_id: str, path: str) -> str:
        """The API URL of a run's artifact (GET downloads it)."""
        return f"{self.base}{quote(run_id, safe='')}/artifacts/{quote(path, safe='/')}"

    def upload_bytes(self, run_id: str, path: str, data: bytes) -> LoggedArtifact:
        """Store `data` as the run's file `path`."""
        check_artifact_path(path)
        expected = bytes_digest(data)
        return self._put(run_id, path, lambda: iter((data,)), len(data), expected)

    def upload_file(self, run_id: str, path: str, local: str | os.PathLike[str]) -> LoggedArtifact:
        """Store the local file `local` as the run's file `path` (streamed, never read whole)."""
        check_artifact_path(path)
        # Hashed first: the API's answer is checked against it, and a retry resends the same bytes.
        expected, size = file_digest(local)

        def chunks() -> Iterator[bytes]:
            with open(local, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return self._put(run_id, path, chunks, size, expected)

    def _put(
        self, run_id: str, path: str, body: Callable[[], Iterator[bytes]], size: int, expected: str
    ) -> LoggedArtifact:
        url = self.url_of(run_id, path)
        run_deadline = time.monotonic() + self.run_wait_s
        failures = 0
        delay = 0.1
        while True:
            try:
                # An explicit Content-Length: the API refuses an upload past the tenant's
                # quota before reading its body, and httpx then streams without chunking.
                response = self._client.put(url, content=body(), headers={"Content-Length": str(size)})
            except httpx.HTTPError as exc:
                raise ArtifactUploadError(f"PUT {url}: {type(exc).__name__}: {exc}") from exc
            status = response.status_code
            if status in (200, 201, 202):
                return self._result(response, path, size, expected)
            now = time.monotonic()
            if status == 404 and now < run_deadline:
                # The run's RunStarted is not projected yet: the API will know it shortly.
                time.sleep(min(delay, max(0.0, run_deadline - now)))
                delay = min(delay * 2, 1.0)
                continue
            if status in _RETRYABLE:
                failures += 1
                if failures < self._attempts:
                    time.sleep(max(delay, _retry_after(response)))
                    delay = min(delay * 2, 5.0)
                    continue
            raise ArtifactUploadError(f"PUT {url}: HTTP {status}: {response.text[:500]}")

    @staticmethod
    def _result(response: httpx.Response, path: str, size: int, expected: str) -> LoggedArtifact:
        try:
            stored = response.json()["artifact"]
            digest, stored_size = str(stored["digest"]), int(stored["size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactUploadError(f"unexpected answer to the upload of {path!r}: {exc}") from None
        if digest != expected or stored_size != size:
            raise ArtifactUploadError(
                f"{path!r} changed while it was uploaded: sent {expected} ({size} bytes),"
                f" the API stored {digest} ({stored_size} bytes)"
            )
        return LoggedArtifact(path, size, digest)

    def download(self, run_id: str, path: str) -> bytes:
        """The bytes of a run's file (for tools and tests)."""
        response = self._client.get(self.url_of(run_id, path))
        if response.status_code != 200:
            raise ArtifactUploadError(f"GET {path!r} of run {run_id}: HTTP {response.status_code}")
        return response.content

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def uploader_for(settings: SdkSettings, *, transport_given: bool) -> ArtifactUploader | None:
    """The uploader RUNLEDGER_UPLOAD_ARTIFACTS asks for (resolved settings), or None."""
    mode = settings.upload_artifacts
    if mode == "off" or settings.mode != "online" or not settings.url:
        return None
    if mode == "auto" and transport_given:
        return None  # a transport object (tests, in-memory): no network unless asked for
    return ArtifactUploader(
        settings.url,
        settings.api_key.get_secret_value(),
        timeout_s=settings.artifact_timeout_s,
        connect_timeout_s=min(settings.send_timeout_s, 10.0),
        attempts=settings.http_retries,
    )


def _retry_after(response: httpx.Response) -> float:
    """Seconds a 429/503 asked to wait (Retry-After in seconds), capped at 30; else 0."""
    try:
        return min(30.0, max(0.0, float(response.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0
