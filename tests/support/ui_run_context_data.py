"""Data for the run page's context panels (artifacts, code and environment, system metrics,
lineage), logged by a real training script through the real SDK: events over Kafka, files
through the API (RUNLEDGER_URL), run from a git work tree with an uncommitted change so the
SDK captures a dirty code state and stores its diff as an artifact.

`log_context_runs` writes the files and the script, runs it and returns what it logged;
`wait_context_projected` waits until the API serves all of it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

IMAGE_SIZE = (48, 24)  # width, height of images/sample.png
BIG_LOG_LINES = 9000  # logs/big.log: about 300 KiB, more than a text preview reads
CSV_ROWS = [["epoch", "loss", "accuracy"], ["0", "0.9", "0.51"], ["1", "0.45", "0.78"], ["2", "0.31", "0.86"]]
CONFIG = {"optimizer": {"name": "adamw", "lr": 0.0003}, "layers": [64, 32], "dropout_marker": "keep-me-0.25"}
NOTES = "first line of the notes\nsecond line: ünïcode ok\n"
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="30" height="20" viewBox="0 0 30 20">'
    '<rect width="30" height="20" fill="#2563eb"/></svg>\n'
)

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import time
    from pathlib import Path

    import runledger_sdk as rl

    experiment, files, dataset, model = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    with rl.start_run(experiment=experiment, name="context-base") as base:
        rl.seed_everything(3)
        base.log_input(dataset, version="7", source="s3://bucket/ui-corpus")
        for step in range(5):
            base.log_metrics({"train/loss": 1.0 / (step + 1), "val/loss": 1.1 / (step + 1)}, step=step)
        base.log_artifact(files / "sample.png", "images")
        base.log_artifact(files / "diagram.svg", "images")
        base.log_artifact(files / "config.json")
        base.log_artifact(files / "notes.txt", "logs")
        base.log_artifact(files / "big.log", "logs")
        base.log_artifact(files / "table.csv", "tables")
        base.log_model(model, version=1, source="s3://models/ui/1")
        time.sleep(1.5)  # a few system metric samples (RUNLEDGER_SYSTEM_METRICS_INTERVAL_S=0.2)
    with rl.start_run(experiment=experiment, name="context-derived") as derived:
        derived.derived_from(base.run_id, relation="fine_tuned_from")
        derived.log_metrics({"train/loss": 0.1, "val/loss": 0.12}, step=0)
    print(json.dumps({"base": base.run_id, "derived": derived.run_id}), flush=True)
    """
)


@dataclass(frozen=True)
class ContextRuns:
    """What the script logged."""

    experiment: str
    base_run_id: str
    derived_run_id: str
    dataset: str  # dataset name; its lineage id is f"{dataset}@7"
    model: str  # model name; its lineage id is f"{model}@1"
    commit: str
    branch: str
    repo: Path

    @property
    def dataset_id(self) -> str:
        return f"{self.dataset}@7"

    @property
    def model_id(self) -> str:
        return f"{self.model}@1"


def png(width: int, height: int) -> bytes:
    """A real RGB PNG (a gradient), written without an imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_files(root: Path) -> Path:
    """The files the script logs as artifacts."""
    root.mkdir(parents=True)
    (root / "sample.png").write_bytes(png(*IMAGE_SIZE))
    (root / "diagram.svg").write_text(SVG)
    (root / "config.json").write_text(json.dumps(CONFIG))
    (root / "notes.txt").write_text(NOTES, encoding="utf-8")
    (root / "big.log").write_text(
        "".join(f"line {i:05d} of a long training log\n" for i in range(BIG_LOG_LINES)),
    )
    (root / "table.csv").write_text("\n".join(",".join(r) for r in CSV_ROWS) + "\n")
    return root


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def dirty_repo(root: Path) -> Path:
    """A git work tree (branch ui-context, a remote) whose committed train.py was then changed."""
    root.mkdir(parents=True)
    _git(root, "init", "-q", "-b", "ui-context")
    _git(root, "config", "user.email", "e2e@example.com")
    _git(root, "config", "user.name", "e2e")
    _git(root, "remote", "add", "origin", "https://github.com/example/runledger-ui-demo.git")
    (root / "train.py").write_text(SCRIPT)
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "initial")
    (root / "train.py").write_text(SCRIPT + "# tuned the learning rate\n")
    return root


def log_context_runs(
    *, url: str, bootstrap: str, events_topic: str, api_key: str, work: Path, suffix: str
) -> ContextRuns:
    """Run the training script (events over Kafka, files through the API); what it logged."""
    repo = dirty_repo(work / "repo")
    files = write_files(work / "files")
    experiment, dataset, model = f"ui-context-{suffix}", f"ui-corpus-{suffix}", f"ui-model-{suffix}"
    env = {
        **os.environ,
        "RUNLEDGER_API_KEY": api_key,
        "RUNLEDGER_TENANT": "default",
        "RUNLEDGER_TRANSPORT": "kafka",
        "RUNLEDGER_KAFKA_BOOTSTRAP": bootstrap,
        "RUNLEDGER_EVENTS_TOPIC": events_topic,
        "RUNLEDGER_URL": url,
        "RUNLEDGER_SPOOL_DIR": str(work / "spool"),
        "RUNLEDGER_STATE_DIR": str(work / "no-state"),
        "RUNLEDGER_SYSTEM_METRICS_INTERVAL_S": "0.2",
        "RUNLEDGER_CAPTURE_CODE_STATE": "true",
        "RUNLEDGER_CAPTURE_ENVIRONMENT": "true",
    }
    done = subprocess.run(
        [sys.executable, "train.py", experiment, str(files), dataset, model],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    return ContextRuns(
        experiment=experiment,
        base_run_id=ids["base"],
        derived_run_id=ids["derived"],
        dataset=dataset,
        model=model,
        commit=_git(repo, "rev-parse", "HEAD"),
        branch="ui-context",
        repo=repo,
    )


def _ready(client: httpx.Client, path: str, check: Any, params: dict[str, Any] | None = None) -> Any:
    response = client.get(path, params=params)
    if response.status_code != 200:
        return None
    body = response.json()
    return body if check(body) else None


def wait_context_projected(
    url: str, headers: dict[str, str], runs: ContextRuns, limit_s: float = 120.0
) -> None:
    """Until the API serves both runs finished, the documents, the artifacts, the system
    metrics and the lineage edges of what `runs` logged."""
    base = runs.base_run_id
    checks: list[tuple[str, Any, dict[str, Any] | None]] = [
        (f"/api/v1/runs/{base}", lambda b: b["info"]["status"] == "FINISHED", None),
        (f"/api/v1/runs/{runs.derived_run_id}", lambda b: b["info"]["status"] == "FINISHED", None),
        (
            f"/api/v1/runs/{base}/documents",
            lambda b: b["code_state"] is not None and b["environment"] is not None,
            None,
        ),
        (
            f"/api/v1/runs/{base}/artifacts",
            lambda b: (
                {"config.json", "images", "logs", "tables", "runledger"} <= {e["path"] for e in b["files"]}
            ),
            None,
        ),
        (
            f"/api/v1/runs/{base}/metrics",
            lambda b: any(m["key"].startswith("system/cpu") for m in b["metrics"]),
            None,
        ),
        (f"/api/v1/lineage/run/{base}", lambda b: len(b["edges"]) >= 3, {"depth": 1}),
    ]
    deadline = time.monotonic() + limit_s
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for path, check, params in checks:
            while _ready(client, path, check, params) is None:
                if time.monotonic() > deadline:
                    last = client.get(path, params=params)
                    raise TimeoutError(
                        f"{path} not ready in {limit_s:.0f}s: {last.status_code} {last.text[:400]}"
                    )
                time.sleep(0.2)
