"""Keeps a process's view of keys and grants current: revocations apply within a second.

Every control-plane change bumps a generation number in Postgres. The watcher
polls that number (one tiny query per interval) and reloads the whole snapshot
when it moved; a process can also `refresh()` right after its own change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from runledger.auth.model import AuthSnapshot
from runledger.auth.rbac import Authorizer

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.5


class AuthWatcher:
    """The current `Authorizer` (and its snapshot), reloaded when the generation moves."""

    def __init__(
        self,
        load: Callable[[], Awaitable[AuthSnapshot]],
        generation: Callable[[], Awaitable[int]],
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self._load = load
        self._generation = generation
        self._poll_s = poll_s
        self._authorizer: Authorizer | None = None
        self._task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()

    @property
    def authorizer(self) -> Authorizer:
        """The authorizer of the latest snapshot (start() must have run)."""
        if self._authorizer is None:
            raise RuntimeError("AuthWatcher.start() has not run")
        return self._authorizer

    @property
    def snapshot(self) -> AuthSnapshot:
        return self.authorizer.snapshot

    async def start(self) -> None:
        """Load the first snapshot and start polling."""
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="auth-watcher")

    async def refresh(self) -> None:
        """Reload now (after this process changed the control plane, or when polled)."""
        async with self._reload_lock:
            snapshot = await self._load()
            if self._authorizer is None or snapshot.generation != self._authorizer.snapshot.generation:
                self._authorizer = await asyncio.to_thread(Authorizer, snapshot)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                if await self._generation() != self.authorizer.snapshot.generation:
                    await self.refresh()
            except Exception as exc:  # keep the last good snapshot; a later poll retries
                log.warning("auth snapshot reload failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
