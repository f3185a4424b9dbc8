"""Code state: git commit, branch, remote, dirty flag, capped diff, entry point and arguments."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import runledger_sdk as rl
from runledger.events.codec import decode
from runledger.events.models import CodeStateCapturedPayload, EventType
from runledger_sdk import code_state
from tests.support.sdk import memory_sdk


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        check=True,
        text=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit on branch `main` and a remote with credentials."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('hello')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    git(path, "remote", "add", "origin", "https://user:s3cret@git.example.com/team/repo.git")
    return path


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    with memory_sdk(tmp_path, capture_code_state=True) as memory:
        yield memory


def run_events(transport: rl.InMemoryTransport, run_id: str) -> list[Any]:
    assert rl.flush(5)
    return [d for d in (decode(r.value) for r in transport.records) if d.envelope.run_id == run_id]


def test_clean_repo(repo: Path) -> None:
    state = code_state.capture_code_state([str(repo / "train.py"), "--lr", "0.1"])
    assert state["commit"] == git(repo, "rev-parse", "HEAD") and len(state["commit"]) == 40
    assert state["branch"] == "main"
    assert state["remote_url"] == "https://git.example.com/team/repo.git"  # no credentials
    assert state["dirty"] is False
    assert state["diff"] is None and state["diff_truncated"] is False
    assert state["entry_point"] == str((repo / "train.py").resolve())
    assert state["args"] == ["--lr", "0.1"]
    CodeStateCapturedPayload.model_validate(state)
    assert code_state.code_state_tags(state) == {
        "git.commit": state["commit"],
        "git.branch": "main",
        "git.dirty": "false",
    }


def test_dirty_repo_carries_the_diff(repo: Path) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    (repo / "untracked.txt").write_text("not part of the diff\n")
    state = code_state.capture_code_state([str(repo / "train.py")])
    assert state["dirty"] is True
    assert state["diff"] is not None and state["diff_truncated"] is False
    assert "-print('hello')" in state["diff"] and "+print('changed')" in state["diff"]
    assert "untracked" not in state["diff"]
    assert code_state.code_state_tags(state)["git.dirty"] == "true"


def test_untracked_files_alone_are_not_dirty(repo: Path) -> None:
    (repo / "notes.txt").write_text("scratch\n")
    assert code_state.capture_code_state([str(repo / "train.py")])["dirty"] is False


def test_large_diff_is_capped_and_flagged(repo: Path) -> None:
    (repo / "train.py").write_text("".join(f'print("line {i}")\n' for i in range(20_000)))
    state = code_state.capture_code_state([str(repo / "train.py")], max_diff_bytes=10_000)
    assert state["diff_truncated"] is True
    assert len(orjson.dumps(state["diff"])) <= 10_000
    assert state["diff"].startswith("diff --git") and state["diff"].endswith("\n")  # cut at a line end


def test_entry_point_directory_wins_over_the_working_directory(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "elsewhere")
    monkeypatch.chdir(other)
    assert code_state.capture_code_state([str(repo / "train.py")])["branch"] == "main"
    # An entry point outside any repository (python -c): the working directory's repository.
    assert code_state.capture_code_state(["-c"])["branch"] == "elsewhere"


def test_outside_git_only_entry_point_and_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "script.py").write_text("")
    monkeypatch.chdir(plain)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repo above
    state = code_state.capture_code_state([str(plain / "script.py"), "x"])
    assert state == {"entry_point": str((plain / "script.py").resolve()), "args": ["x"]}
    assert code_state.code_state_tags(state) == {}
    CodeStateCapturedPayload.model_validate(state)


def test_without_git_executable(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    state = code_state.capture_code_state([str(repo / "train.py")])
    assert "commit" not in state and state["entry_point"].endswith("train.py")


def test_git_too_slow_is_absent(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    state = code_state.capture_code_state([str(repo / "train.py")], timeout=0.2)
    assert "commit" not in state


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_abc@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("http://github.com/org/repo", "http://github.com/org/repo"),
        ("ssh://git:pw@host:2222/repo.git", "ssh://git@host:2222/repo.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
    ],
)
def test_strip_credentials(url: str, expected: str) -> None:
    assert code_state.strip_credentials(url) == expected


def test_secret_arguments_are_redacted() -> None:
    args = [
        "--lr",
        "0.1",
        "--api-key",
        "abc",
        "--db_password=hunter2",
        "--max-tokens",
        "10",
        "--data",
        "https://u:p@host/data.csv",
    ]
    assert code_state.redact_args(args) == [
        "--lr",
        "0.1",
        "--api-key",
        "***",
        "--db_password=***",
        "--max-tokens",
        "10",
        "--data",
        "https://host/data.csv",
    ]


def test_top_level_run_emits_code_state_and_tags(
    repo: Path, transport: rl.InMemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "train.py").write_text("print('dirty')\n")
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py"), "--epochs", "3"])
    with rl.start_run() as run, rl.start_run(nested=True) as child:
        pass
    events = run_events(transport, run.run_id)
    types = [e.envelope.type for e in events]
    assert types.count(EventType.CODE_STATE_CAPTURED) == 1
    assert types.index(EventType.CODE_STATE_CAPTURED) < types.index(EventType.STATUS_CHANGED)
    payload = next(e.payload for e in events if e.envelope.type is EventType.CODE_STATE_CAPTURED)
    assert payload.commit == git(repo, "rev-parse", "HEAD")
    assert payload.branch == "main" and payload.dirty is True and payload.args == ["--epochs", "3"]
    assert payload.diff is not None and "+print('dirty')" in payload.diff
    tags: dict[str, str] = {}
    for e in events:
        if e.envelope.type is EventType.TAGS_SET:
            tags.update(e.payload.tags)
    assert tags == {"git.commit": payload.commit, "git.branch": "main", "git.dirty": "true"}
    assert run.tags["git.commit"] == payload.commit
    # Nested runs share their parent's process: no capture of their own.
    assert EventType.CODE_STATE_CAPTURED not in [e.envelope.type for e in run_events(transport, child.run_id)]


def test_capture_can_be_turned_off(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = rl.InMemoryTransport()
    rl.init(
        transport=memory,
        spool_dir=tmp_path / "spool",
        system_metrics_interval_s=0,
        capture_code_state=False,
        capture_environment=False,
        lint_runs=False,
    )
    try:
        monkeypatch.setattr(sys, "argv", [str(repo / "train.py")])
        with rl.start_run() as run:
            pass
        types = [e.envelope.type for e in run_events(memory, run.run_id)]
        assert types == [EventType.RUN_STARTED, EventType.STATUS_CHANGED]
    finally:
        rl.shutdown(5)
