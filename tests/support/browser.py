"""A real browser for the web UI's tests and benchmark: Debian's chromium driven by Playwright.

`make test` installs /usr/bin/chromium when missing (Makefile target `chromium`);
RUNLEDGER_CHROMIUM names another binary. Playwright's own browser download is never used
(no network at run time): the executable is passed explicitly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """The chromium binary; a clear error when there is none."""
    candidates = [
        os.environ.get("RUNLEDGER_CHROMIUM", ""),
        "/usr/bin/chromium",
        shutil.which("chromium") or "",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError(
        "no chromium for the browser tests: run `make chromium` (apt-get install chromium, as root)"
        " or set RUNLEDGER_CHROMIUM to a Chromium binary"
    )


def launch(playwright: Any) -> Any:
    """A headless chromium Browser (playwright.chromium.launch with the system binary)."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
