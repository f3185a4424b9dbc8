"""Artifacts of runs: uploads, the code diff and environment as files, log_model, artifact bloat.

The API side is a small real HTTP server speaking the native artifact routes (PUT/GET
/api/v1/runs/{run_id}/artifacts/{path}); the e2e tests (tests/e2e/test_sdk_artifacts.py)
run the same against the real stack.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.events.codec import decode, metric_arrays
from runledger.events.models import (
    AnomalyDetectedPayload,
    CodeStateCapturedPayload,
    EnvironmentCapturedPayload,
    EventType,
)
from runledger_sdk import artifacts, code_state, environment, lint
from runledger_sdk.artifacts import ArtifactUploader, LoggedArtifact, uploader_for
from runledger_sdk.config import load_settings
from runledger_sdk.model_size import MODEL_PARAMETERS_KEY, MODEL_SIZE_KEY
from tests.support.sdk import memory_sdk

TOKEN = generate_key().token


@dataclass
class FakeApi:
    """What the fake API stored, and how it misbehaves."""

    url: str = ""
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    puts: list[tuple[str, str]] = field(default_factory=list)
    not_found_first: int = 0  # answer 404 (run not projected yet) to this many PUTs
    wrong_digest: bool = False
    fail_with: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _route(self) -> tuple[str, str] | None:
            prefix = "/api/v1/runs/"
            if not self.path.startswith(prefix) or "/artifacts/" not in self.path:
                return None
            run_id, _, path = self.path[len(prefix) :].partition("/artifacts/")
            return unquote(run_id), unquote(path)

        def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            route = self._route()
            data = self.rfile.read(int(self.headers["Content-Length"]))
            if route is None or self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._answer(401 if route else 404, b"{}")
                return
            with api.lock:
                api.puts.append(route)
                if api.fail_with is not None:
                    self._answer(api.fail_with, b'{"error_code": "X"}')
                    return
                if api.not_found_first > 0:
                    api.not_found_first -= 1
                    self._answer(404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}')
                    return
                api.files[route] = data
            digest = "sha256:" + hashlib.sha256(b"x" if api.wrong_digest else data).hexdigest()
            artifact = {"path": route[1], "size": len(data), "digest": digest, "media_type": "x"}
            body = {"run_id": route[0], "artifact": artifact, "projected": True, "consistency_token": "t"}
            self._answer(201, json.dumps(body).encode())

        def do_GET(self) -> None:
            route = self._route()
            found = api.files.get(route) if route else None
            if found is None:
                self._answer(404, b"{}")
            else:
                self._answer(200, found, "application/octet-stream")

    return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    state = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree with one commit, then a tracked file changed (dirty)."""
    root = tmp_path / "repo"
    root.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (root / "train.py").write_text("print('v1')\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "v1")
    (root / "train.py").write_text("print('v2: uncommitted')\n")
    return root


def events_of(transport: rl.InMemoryTransport, run_id: str) -> list[Any]:
    assert rl.flush(5)
    return [d for d in (decode(r.value) for r in transport.records) if d.envelope.run_id == run_id]


def payload_of(events: list[Any], type: EventType) -> Any:
    (payload,) = [e.payload for e in events if e.envelope.type is type]
    return payload


def uploading(tmp_path: Path, api: FakeApi, **settings: Any) -> Any:
    """memory_sdk whose client uploads to the fake API."""
    return memory_sdk(tmp_path, upload_artifacts="api", url=api.url, api_key=TOKEN, **settings)


def metric_points(events: list[Any], key: str) -> list[float]:
    points: list[float] = []
    for e in events:
        if e.envelope.type is EventType.METRICS_LOGGED:
            kidx, values, _, _ = metric_arrays(e.payload)
            points.extend(
                v for k, v in zip(kidx.tolist(), values.tolist(), strict=True) if e.payload.keys[k] == key
            )
    return points


# --- where uploads go --------------------------------------------------------------------------------


def test_uploader_only_when_an_api_url_is_known_and_wanted(tmp_path: Path) -> None:
    base = {"state_dir": tmp_path / "none", "api_key": TOKEN}
    http = load_settings(**base, url="http://api:8765")
    assert uploader_for(http, transport_given=False) is not None
    assert uploader_for(http, transport_given=True) is None  # auto: a transport object is local
    assert uploader_for(load_settings(**base, url="http://api", upload_artifacts="api"), transport_given=True)
    assert (
        uploader_for(load_settings(**base, url="http://api", upload_artifacts="off"), transport_given=False)
        is None
    )
    kafka_only = load_settings(**base, transport="kafka", kafka_bootstrap="broker:9092")
    assert uploader_for(kafka_only, transport_given=False) is None
    kafka_and_api = load_settings(**base, transport="kafka", kafka_bootstrap="b:9092", url="http://api")
    assert uploader_for(kafka_and_api, transport_given=False) is not None
    offline = load_settings(**base, mode="offline", url="http://api", offline_dir=tmp_path / "off")
    assert uploader_for(offline, transport_given=False) is None


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/../b", "./a", "a\\b", "C:/x", "a/\x00", "x" * 1025])
def test_bad_artifact_paths_fail_before_any_upload(path: str) -> None:
    with pytest.raises(ValueError):
        artifacts.check_artifact_path(path)


def test_upload_waits_for_the_api_to_know_the_run(api: FakeApi, tmp_path: Path) -> None:
    api.not_found_first = 3
    uploader = ArtifactUploader(api.url, TOKEN, run_wait_s=5)
    stored = uploader.upload_bytes("run-1", "a/b.txt", b"hello")
    assert stored == LoggedArtifact("a/b.txt", 5, "sha256:" + hashlib.sha256(b"hello").hexdigest())
    assert api.files[("run-1", "a/b.txt")] == b"hello" and len(api.puts) == 4
    assert uploader.download("run-1", "a/b.txt") == b"hello"
    # Past the wait, a 404 is an error.
    api.not_found_first = 100
    with pytest.raises(rl.ArtifactUploadError, match="404"):
        ArtifactUploader(api.url, TOKEN, run_wait_s=0.3).upload_bytes("run-2", "x", b"x")
    uploader.close()


def test_upload_errors(api: FakeApi, tmp_path: Path) -> None:
    uploader = ArtifactUploader(api.url, TOKEN, attempts=2)
    api.wrong_digest = True
    with pytest.raises(rl.ArtifactUploadError, match="changed while it was uploaded"):
        uploader.upload_bytes("r", "x", b"data")
    api.wrong_digest = False
    api.fail_with = 400
    with pytest.raises(rl.ArtifactUploadError, match="HTTP 400"):
        uploader.upload_bytes("r", "x", b"data")
    api.fail_with, before = 503, len(api.puts)
    with pytest.raises(rl.ArtifactUploadError, match="HTTP 503"):
        uploader.upload_bytes("r", "x", b"data")
    assert len(api.puts) - before == 2  # retried once
    unreachable = ArtifactUploader("http://127.0.0.1:9", TOKEN)
    with pytest.raises(rl.ArtifactUploadError, match="ConnectError"):
        unreachable.upload_bytes("r", "x", b"data")


# --- the code diff and the environment as artifacts ------------------------------------------------------


def test_dirty_tree_diff_and_environment_become_artifacts(
    api: FakeApi, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py")])
    with uploading(tmp_path, api, capture_code_state=True, capture_environment=True) as memory:
        with rl.start_run() as run:
            rl.log_metric("loss", 0.5)
        events = events_of(memory, run.run_id)
    code = payload_of(events, EventType.CODE_STATE_CAPTURED)
    assert isinstance(code, CodeStateCapturedPayload)
    assert code.dirty and code.diff is None and code.diff_truncated is False
    assert code.diff_artifact == code_state.DIFF_ARTIFACT == "runledger/code/diff.patch"
    diff = api.files[(run.run_id, code.diff_artifact)].decode()
    expected = subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    assert diff == expected and "+print('v2: uncommitted')" in diff
    # The stored patch recreates the work tree from the commit.
    subprocess.run(["git", "checkout", "--", "train.py"], cwd=repo, check=True)
    subprocess.run(["git", "apply", "-"], cwd=repo, input=diff, text=True, check=True)
    assert (repo / "train.py").read_text() == "print('v2: uncommitted')\n"

    env = payload_of(events, EventType.ENVIRONMENT_CAPTURED)
    assert isinstance(env, EnvironmentCapturedPayload)
    stored = json.loads(api.files[(run.run_id, environment.ENVIRONMENT_ARTIFACT)])
    assert stored == env.model_dump(mode="json")
    assert run.tags["env.hash"] == env.environment_hash[:12]
    assert (run.run_id, environment.CONDA_ARTIFACT) not in api.files  # not in conda
    # The SDK's own files are known to the run but never judged as bloat.
    assert {a.path for a in run.logged_artifacts()} == {code.diff_artifact, environment.ENVIRONMENT_ARTIFACT}


def test_large_diff_is_cut_at_the_artifact_cap(
    api: FakeApi, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "train.py").write_text("".join(f"print({i})\n" for i in range(20_000)))
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py")])
    with uploading(tmp_path, api, capture_code_state=True, code_diff_max_bytes=4096) as memory:
        with rl.start_run() as run:
            pass
        code = payload_of(events_of(memory, run.run_id), EventType.CODE_STATE_CAPTURED)
    assert code.diff is None and code.diff_truncated is True
    assert 0 < len(api.files[(run.run_id, code.diff_artifact)]) <= 4096


def test_diff_stays_inline_when_the_upload_fails(
    api: FakeApi,
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api.fail_with = 403
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py")])
    with (
        caplog.at_level(logging.WARNING, "runledger_sdk"),
        uploading(tmp_path, api, capture_code_state=True, capture_environment=True) as memory,
    ):
        with rl.start_run() as run:
            pass
        events = events_of(memory, run.run_id)
    code = payload_of(events, EventType.CODE_STATE_CAPTURED)
    assert code.diff_artifact is None and "+print('v2: uncommitted')" in code.diff
    assert "runledger/code/diff.patch" in caplog.text and "HTTP 403" in caplog.text
    # One refusal is enough: the environment is not tried, and still sent as its event.
    assert api.puts == [(run.run_id, "runledger/code/diff.patch")]
    assert payload_of(events, EventType.ENVIRONMENT_CAPTURED).packages


def test_without_uploads_the_diff_is_inline(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py")])
    with memory_sdk(tmp_path, capture_code_state=True) as memory:
        with rl.start_run() as run:
            pass
        code = payload_of(events_of(memory, run.run_id), EventType.CODE_STATE_CAPTURED)
    assert code.diff_artifact is None and "+print('v2: uncommitted')" in code.diff


def test_conda_export_is_stored_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conda = tmp_path / "bin" / "conda"
    conda.parent.mkdir()
    long_line = "# " + "x" * 200 + "\n"
    conda.write_text(f"#!/bin/sh\necho 'name: ml'\nfor i in $(seq 1000); do printf '{long_line}'; done\n")
    conda.chmod(0o755)
    monkeypatch.setenv("CONDA_EXE", str(conda))
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path / "envs" / "ml"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi of the host
    payload, files = environment.capture_environment_with_files(lambda: {"numpy": "2.0"})
    full = files[environment.CONDA_ARTIFACT].decode()
    assert full.startswith("name: ml\n") and len(full) > environment.CONDA_EXPORT_MAX_CHARS
    assert payload["conda_export"] == full[: environment.CONDA_EXPORT_MAX_CHARS]
    assert json.loads(files[environment.ENVIRONMENT_ARTIFACT])["conda_export"] == full


# --- log_artifact and log_model ---------------------------------------------------------------------------


def test_log_artifact_and_log_artifacts(api: FakeApi, tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "a.txt").write_text("a")
    (tmp_path / "out" / "sub" / "b.bin").write_bytes(b"\x00\x01")
    with uploading(tmp_path, api), rl.start_run() as run:
        one = rl.log_artifact(tmp_path / "out" / "a.txt")
        two = rl.log_artifact(tmp_path / "out" / "a.txt", "copies/")
        many = rl.log_artifacts(tmp_path / "out", "outputs")
        with pytest.raises(FileNotFoundError):
            rl.log_artifact(tmp_path / "missing")
    assert (one.path, two.path) == ("a.txt", "copies/a.txt")
    assert [a.path for a in many] == ["outputs/a.txt", "outputs/sub/b.bin"]
    assert api.files[(run.run_id, "outputs/sub/b.bin")] == b"\x00\x01"
    with pytest.raises(rl.RunEndedError):
        run.log_artifact(tmp_path / "out" / "a.txt")


def test_log_artifact_without_uploads_says_why(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with (
        memory_sdk(tmp_path),
        rl.start_run(),
        pytest.raises(rl.ArtifactsUnavailable, match="uploads no artifacts"),
    ):
        rl.log_artifact(tmp_path / "f")


def _fitted_model() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


def test_log_model_pickles_an_sklearn_model_and_logs_size_and_parameters(
    api: FakeApi, tmp_path: Path
) -> None:
    model = _fitted_model()
    with uploading(tmp_path, api) as memory:
        with rl.start_run() as run:
            node = rl.log_model("clf", model=model)
        events = events_of(memory, run.run_id)
    stored = api.files[(run.run_id, "models/clf/model.pkl")]
    assert pickle.loads(stored).coef_.tolist() == model.coef_.tolist()
    assert metric_points(events, MODEL_SIZE_KEY) == [len(stored)]
    assert metric_points(events, MODEL_PARAMETERS_KEY) == [3 + 1]  # coef_ (1x3) + intercept_ (1)
    link = next(e.payload for e in events if e.envelope.type is EventType.LINEAGE_LINKED)
    assert link.target_id == node == f"clf@run:{run.run_id}"


def test_log_model_from_a_directory_with_numpy_weights(api: FakeApi, tmp_path: Path) -> None:
    weights = {"w1": np.zeros((8, 4), np.float32), "b1": np.zeros(8, np.float32)}
    folder = tmp_path / "export"
    (folder / "weights").mkdir(parents=True)
    for name, array in weights.items():
        np.save(folder / "weights" / f"{name}.npy", array)
    (folder / "config.json").write_text('{"layers": 1}')
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    with uploading(tmp_path, api) as memory:
        with rl.start_run() as run:
            rl.log_model("mlp", version=2, path=folder, model=weights)
        events = events_of(memory, run.run_id)
    assert sorted(p for r, p in api.files if r == run.run_id) == [
        "models/mlp/config.json",
        "models/mlp/weights/b1.npy",
        "models/mlp/weights/w1.npy",
    ]
    assert metric_points(events, MODEL_SIZE_KEY) == [size]
    assert metric_points(events, MODEL_PARAMETERS_KEY) == [8 * 4 + 8]
    registered = payload_of(events, EventType.MODEL_VERSION_REGISTERED)
    assert registered.source == f"runs:/{run.run_id}/models/mlp"


def test_log_model_without_uploads_still_measures(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights = tmp_path / "w.npy"
    np.save(weights, np.zeros(10))
    with caplog.at_level(logging.WARNING, "runledger_sdk"), memory_sdk(tmp_path) as memory:
        with rl.start_run() as run:
            rl.log_model("m", path=weights)
        events = events_of(memory, run.run_id)
    assert metric_points(events, MODEL_SIZE_KEY) == [weights.stat().st_size]
    assert metric_points(events, MODEL_PARAMETERS_KEY) == []  # a path alone: parameters unknown
    assert "not stored" in caplog.text


# --- artifact bloat -------------------------------------------------------------------------------------------


def art(path: str, size: int, content: str = "") -> LoggedArtifact:
    return LoggedArtifact(path, size, "sha256:" + hashlib.sha256((content or path).encode()).hexdigest())


def test_oversized_artifacts_are_bloat() -> None:
    (finding,) = lint.lint_artifacts([art("small.txt", 10), art("big.ckpt", 2000), art("bigger", 5000)], 1000)
    assert finding.kind == lint.ARTIFACT_BLOAT and finding.key == "artifacts" and finding.severity == 0.4
    assert finding.evidence["reasons"] == ["oversized"]
    assert finding.evidence["oversized"] == [
        {"path": "bigger", "size": 5000},
        {"path": "big.ckpt", "size": 2000},
    ]
    assert "'bigger'" in finding.message and finding.evidence["wasted_bytes"] == 0


def test_the_same_content_under_several_paths_is_bloat() -> None:
    same = [art(f"ckpt/epoch_{i}.pt", 300, "weights") for i in range(3)]
    (finding,) = lint.lint_artifacts([*same, art("other.pt", 300)], 10_000)
    assert finding.evidence["reasons"] == ["repeated"]
    (repeat,) = finding.evidence["repeated"]
    assert repeat["paths"] == ["ckpt/epoch_0.pt", "ckpt/epoch_1.pt", "ckpt/epoch_2.pt"]
    assert repeat["size"] == 300 and finding.evidence["wasted_bytes"] == 600


def test_what_is_not_bloat() -> None:
    assert lint.lint_artifacts([art("a", 10), art("b", 10)], 100) == []
    # The same path logged again replaces it; the SDK's own files are not judged.
    assert lint.lint_artifacts([art("a", 10, "x"), art("a", 10, "x")], 100) == []
    assert lint.lint_artifacts([art("runledger/environment.json", 10**9)], 100) == []


def test_a_run_logging_one_file_twice_gets_a_finding(api: FakeApi, tmp_path: Path) -> None:
    blob = tmp_path / "model.bin"
    blob.write_bytes(b"\x07" * 5000)
    with uploading(tmp_path, api, lint_runs=True, lint_artifact_max_bytes=4096) as memory:
        with rl.start_run() as run:
            rl.seed_everything(1)
            rl.log_metrics({"loss": 0.1, "val/loss": 0.2})
            rl.log_artifact(blob, "best")
            rl.log_artifact(blob, "last")
        events = events_of(memory, run.run_id)
    findings = [e.payload for e in events if e.envelope.type is EventType.ANOMALY_DETECTED]
    assert all(isinstance(f, AnomalyDetectedPayload) for f in findings)
    (bloat,) = findings
    assert bloat.kind == "lint.artifact_bloat"
    assert bloat.evidence["reasons"] == ["oversized", "repeated"]
    assert bloat.evidence["threshold_bytes"] == 4096 and bloat.evidence["wasted_bytes"] == 5000
    assert [o["path"] for o in bloat.evidence["oversized"]] == ["best/model.bin", "last/model.bin"]
    assert bloat.evidence["message"].startswith("2 artifact(s) larger than 4.0 KiB")
