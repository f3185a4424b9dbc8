"""The code a run ran: git commit, branch, remote, dirty flag, diff, entry point and arguments.

Captured when a top-level run starts (RUNLEDGER_CAPTURE_CODE_STATE, default on) and sent as
the run's CodeStateCaptured event; the tags `git.commit`, `git.branch` and `git.dirty` make
runs filterable by it (`GET /api/v1/runs?tag=git.commit:<sha>`).

Everything comes from `git` subprocesses with a short timeout, run in the repository that
holds the entry point (the script), else in the current directory. Outside a git work tree,
without a `git` executable, or when git is slow, the git fields are simply absent (empty):
the run never fails because of them. The entry point and the arguments are always recorded;
values of secret-looking options (`--api-key X`, `--password=X`) are redacted and URLs lose
their credentials, as the remote URL does.

The uncommitted changes (`git diff HEAD` of tracked files) are stored as the run's artifact
DIFF_ARTIFACT (runledger/code/diff.patch, UTF-8), cut at RUNLEDGER_CODE_DIFF_MAX_BYTES
(default 10 MiB; `diff_truncated` then says so); the event's `diff_artifact` names it and
its `diff` is null. When the SDK uploads no artifacts (offline mode, a Kafka-only client,
RUNLEDGER_UPLOAD_ARTIFACTS=off; see runledger_sdk.artifacts) or the upload fails, the diff
travels inline in the event's `diff` field instead, capped at DIFF_MAX_BYTES of encoded JSON:
one event must stay under the broker's and the API's ~1 MB message limit. Either way a
clean tree has neither.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

log = logging.getLogger("runledger_sdk")

GIT_TIMEOUT_S = 5.0  # per git call
DIFF_TIMEOUT_S = 10.0
# Of the diff's JSON encoding: leaves room for the rest of a ~1 MB event.
DIFF_MAX_BYTES = 512 * 1024
DIFF_ARTIFACT = "runledger/code/diff.patch"
REDACTED = "***"

# Git must never prompt (credential helpers), translate messages, or take the index lock
# (`git status` refreshes the index otherwise and could collide with the user's own git).
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "LANGUAGE": ""}

_SECRET_OPTION = re.compile(
    r"(?:^|[-_.])(?:password|passwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credentials?)(?:$|[-_.])"
)
_URL_WITH_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@]+@")


def strip_credentials(url: str) -> str:
    """`url` without user and password (https://token@host/x -> https://host/x).

    An ssh URL keeps its user name (git@, not a secret) but loses a password; scp-like
    remotes (git@host:org/repo.git) carry no password and are returned as they are.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_WITH_USERINFO.sub(r"\1", url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = host
    if parts.scheme in ("ssh", "git+ssh", "ssh+git"):
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{host}" if user else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_args(args: Sequence[str]) -> list[str]:
    """The arguments with values of secret-looking options replaced and URL credentials removed."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-") and len(arg) > 1:
            name, eq, _ = arg.lstrip("-").partition("=")
            if _SECRET_OPTION.search(name.lower()):
                if eq:
                    out.append(arg[: arg.index("=") + 1] + REDACTED)
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(_URL_WITH_USERINFO.sub(r"\1", arg))
    return out


def entry_point(argv: Sequence[str]) -> str:
    """The script the process runs (sys.argv[0]) as an absolute path; "-c" or "" as given."""
    first = argv[0] if argv else ""
    if first and first not in ("-c", "-m") and os.path.exists(first):
        return os.path.realpath(first)
    return first


def _git(args: Sequence[str], cwd: str | Path, timeout: float = GIT_TIMEOUT_S) -> str | None:
    """stdout of `git <args>` (stripped), or None when git is missing, fails or is too slow."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **_GIT_ENV},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace").strip()


def _read_capped(
    cmd: Sequence[str], cwd: str | Path, max_bytes: int, timeout: float
) -> tuple[bytes, bool] | None:
    """At most `max_bytes` of a command's stdout and whether there was more (or time ran out).

    Streams: a diff of gigabytes (a data file committed by mistake) never sits in memory.
    """
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **_GIT_ENV},
        )
    except OSError:
        return None
    timer = threading.Timer(timeout, proc.kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        data = proc.stdout.read(max_bytes + 1)
        more = len(data) > max_bytes
        if more:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
    finally:
        timer.cancel()
    timed_out = code != 0 and not more
    if timed_out and not data:
        return None
    return data[:max_bytes], more or timed_out


def cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` cut (at a line end where possible) so its JSON encoding fits `max_bytes`."""
    size = len(orjson.dumps(text))
    if size <= max_bytes:
        return text, False
    while size > max_bytes:
        keep = max(0, int(len(text) * max_bytes / size) - 16)
        cut = text.rfind("\n", 0, keep)
        text = text[: cut + 1] if cut > keep // 2 else text[:keep]
        size = len(orjson.dumps(text))
    return text, True


def _pick_remote(config: str, branch: str) -> str:
    """URL of the branch's remote, else of origin, else of the first remote ("" if none)."""
    urls: dict[str, str] = {}
    branch_remote = ""
    for line in config.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("remote.") and name.endswith(".url"):
            urls.setdefault(name[len("remote.") : -len(".url")], value)
        elif branch and name == f"branch.{branch}.remote":
            branch_remote = value
    for candidate in (branch_remote, "origin"):
        if candidate in urls:
            return urls[candidate]
    return next(iter(urls.values()), "")


def _repo_for(entry: str, timeout: float = GIT_TIMEOUT_S) -> Path | None:
    """The work tree holding the entry point, else the one holding the current directory."""
    candidates: list[Path] = []
    if entry and os.path.isfile(entry):
        candidates.append(Path(entry).parent)
    candidates.append(Path.cwd())
    for where in candidates:
        top = _git(["rev-parse", "--show-toplevel"], where, timeout)
        if top:
            return Path(top)
    return None


def git_state(
    repo: Path, *, max_diff_bytes: int = DIFF_MAX_BYTES, timeout: float = GIT_TIMEOUT_S
) -> dict[str, Any]:
    """commit, branch, remote_url, dirty, diff, diff_truncated of the work tree `repo`."""
    commit = _git(["rev-parse", "--verify", "-q", "HEAD"], repo, timeout) or ""
    branch = _git(["symbolic-ref", "--short", "-q", "HEAD"], repo, timeout) or ""
    config = _git(["config", "--get-regexp", r"^(remote\..*\.url|branch\..*\.remote)$"], repo, timeout) or ""
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo, timeout)
    dirty = bool(status)
    diff: str | None = None
    truncated = False
    if dirty and commit:
        read = _read_capped(
            ["git", "diff", "HEAD", "--no-color", "--no-ext-diff", "--no-textconv"],
            repo,
            max_diff_bytes,
            max(timeout, DIFF_TIMEOUT_S),
        )
        if read is not None:
            raw, truncated = read
            diff, cut = cap_text(raw.decode("utf-8", "replace"), max_diff_bytes)
            truncated = truncated or cut
    return {
        "commit": commit,
        "branch": branch,
        "remote_url": strip_credentials(_pick_remote(config, branch)),
        "dirty": dirty,
        "diff": diff,
        "diff_truncated": truncated,
    }


def capture_code_state(
    argv: Sequence[str] | None = None, *, max_diff_bytes: int = DIFF_MAX_BYTES, timeout: float = GIT_TIMEOUT_S
) -> dict[str, Any]:
    """The CodeStateCaptured payload of this process (argv default: sys.argv).

    The git fields are empty outside a work tree or without git.
    """
    argv = list(sys.argv if argv is None else argv)
    entry = entry_point(argv)
    state: dict[str, Any] = {"entry_point": entry, "args": redact_args(argv[1:])}
    repo = _repo_for(entry, timeout)
    if repo is not None:
        state.update(git_state(repo, max_diff_bytes=max_diff_bytes, timeout=timeout))
    return state


def code_state_tags(state: dict[str, Any]) -> dict[str, str]:
    """The filterable tags of a code state: git.commit, git.branch, git.dirty (none outside git)."""
    if not state.get("commit"):
        return {}
    tags = {"git.commit": str(state["commit"]), "git.dirty": "true" if state.get("dirty") else "false"}
    if state.get("branch"):
        tags["git.branch"] = str(state["branch"])
    return tags


def store_diff(state: dict[str, Any], upload: Callable[[str, bytes], bool]) -> None:
    """Move the diff of a captured `state` to DIFF_ARTIFACT through `upload` (path, bytes ->
    stored?); when it is not stored, keep it inline, capped at DIFF_MAX_BYTES."""
    diff = state.get("diff")
    if not diff:
        return
    if upload(DIFF_ARTIFACT, diff.encode("utf-8")):
        state["diff_artifact"] = DIFF_ARTIFACT
        state["diff"] = None
        return
    state["diff"], cut = cap_text(diff, DIFF_MAX_BYTES)
    state["diff_truncated"] = bool(state.get("diff_truncated")) or cut
