"""What every mlflow client script shares: its arguments, each step's outcome, one JSON report."""

from __future__ import annotations

import faulthandler
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def describe(exc: BaseException) -> str:
    """The exception's type, MLflow error code (if any), message and innermost frames."""
    code = getattr(exc, "error_code", None)
    frames = "".join(traceback.format_tb(exc.__traceback__)[-3:])
    return f"{type(exc).__name__}[{code}]: {exc}\n{frames}"


def error_code(call: Callable[[], object]) -> str | None:
    """None if `call` succeeds, else the MLflow error code (or the exception type) it raised."""
    try:
        call()
    except Exception as exc:
        return str(getattr(exc, "error_code", None) or type(exc).__name__)
    return None


class Report:
    """Outcomes by step; a failed step is recorded, so later independent steps still run."""

    def __init__(self) -> None:
        self.args: dict[str, Any] = json.loads(sys.argv[1])
        self.data: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        # A hung call shows up as every thread's stack in the log, before the test kills us.
        faulthandler.dump_traceback_later(float(self.args.get("stack_dump_after_s", 200)), exit=False)

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        out: dict[str, Any] = {}
        try:
            yield out
        except Exception as exc:
            self.errors[name] = describe(exc)
        finally:  # only finished steps are in the report, written at once: a killed script leaves them
            self.data[name] = out
            self.write()

    def write(self) -> None:
        """The report goes to a file: the client prints to stdout by itself."""
        Path(self.args["out"]).write_text(json.dumps({"data": self.data, "errors": self.errors}, default=str))


def artifact_files() -> dict[str, bytes]:
    """The files fluent.py logs, by artifact path (the tests compare downloads with these bytes)."""
    return {
        "notes.txt": b"hello from the mlflow client\n",
        "bin/blob.bin": bytes(range(256)) * 1024,  # 256 KiB, every byte value
        "data/a.txt": b"alpha\n",
        "data/sub/b.csv": b"x,y\n1,2\n3,4\n",
    }


CONFIG = {"batch_size": 32, "schedule": {"warmup": 10, "decay": [0.5, 0.25]}, "name": "cfg"}
