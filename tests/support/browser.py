"""A real browser for the web UI's tests and benchmark: Debian's chromium driven by Playwright.

`make test` installs /usr/bin/chromium when missing (Makefile target `chromium`);
RUNLEDGER_CHROMIUM names another binary. Playwright's own browser download is never used
(no network at run time): the executable is passed explicitly.
"""

from __future__ import annotations

import os
import shutil
import time
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


def until(page: Any, script: str, arg: Any = None, timeout_s: float = 30.0) -> Any:
    """Poll `script` (an expression, or a function of `arg`) in the page until it is truthy.

    Not page.wait_for_function: its polling evaluates strings with eval(), which the UI's
    Content-Security-Policy (script-src 'self') rightly forbids.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s}s: {script}")
        page.wait_for_timeout(50)
