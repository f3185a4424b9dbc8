"""Writes answered on the broker's acknowledgement, and the reads that must wait for them.

The unmodified mlflow client cannot carry a consistency token, yet expects to read what it
wrote. Waiting for every write's projection costs one projector round (tens of ms) per call,
so MLflow writes whose checks need nothing unprojected answer once the broker acknowledged
them (durable: acks=all) and are remembered here until projected:

- per caller (tenant, API key): everything it wrote. Its other requests wait for that first
  (`settle`), so it reads its own writes;
- per run created here and not projected yet: the run as written, so the caller's next
  writes to it are checked against that instead of waiting for it to reach Postgres;
- per run with params not projected yet: a params write waits for them, so param
  immutability is checked against every earlier value.

The memory is per API process: clients of a replicated API need sticky sessions for
read-your-writes (deploy/k8s/api.yaml pins clients by address).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.api.consistency import ConsistencyToken
from services.api.errors import TemporarilyUnavailable
from services.api.principal import Principal
from services.api.runs.schemas import RunInfo
from services.api.writes import EventWriter

_Caller = tuple[str, str]  # tenant, API key id
_Run = tuple[str, str]  # tenant, run id (the same shape: _settle serves both)
# Projected entries are swept once the count passes twice what the last sweep left, and
# never below this count (so a small table is not swept on every write).
_MIN_SWEEP = 1024


@dataclass(slots=True)
class _CreatedRun:
    info: RunInfo
    token: ConsistencyToken  # where its creation sits in the log


def merged(old: ConsistencyToken | None, new: ConsistencyToken) -> ConsistencyToken:
    """Both tokens' positions, the highest per partition; a new broker incarnation replaces the
    old one's (its log is gone, so nothing more of it will be projected)."""
    if old is None or old.incarnation != new.incarnation or old.topic != new.topic:
        return new
    return ConsistencyToken.from_positions(new.incarnation, new.topic, (*old.offsets, *new.offsets))


class PendingWrites:
    """What this API process acknowledged and the projector has not applied yet."""

    def __init__(self, writer: EventWriter) -> None:
        """Track the writes of `writer`'s publisher against its projection waiter."""
        self._writer = writer
        self._callers: dict[_Caller, ConsistencyToken] = {}
        self._created: dict[_Run, _CreatedRun] = {}
        self._params: dict[_Run, ConsistencyToken] = {}
        self._next_sweep = _MIN_SWEEP

    def __len__(self) -> int:
        """How many entries are held (projected ones go at the next sweep)."""
        return len(self._callers) + len(self._created) + len(self._params)

    def record(
        self,
        principal: Principal,
        token: ConsistencyToken,
        *,
        created: RunInfo | None = None,
        params_of: str | None = None,
    ) -> None:
        """Remember an acknowledged write of `principal`: `created` when it starts that run,
        `params_of` when it logs params of that run."""
        caller = (principal.tenant_id, principal.key_id)
        self._callers[caller] = merged(self._callers.get(caller), token)
        if created is not None:
            self._created[(principal.tenant_id, created.run_id)] = _CreatedRun(created, token)
        if params_of is not None:
            run = (principal.tenant_id, params_of)
            self._params[run] = merged(self._params.get(run), token)
        if len(self) > self._next_sweep:
            self.sweep()

    def created_run(self, tenant_id: str, run_id: str) -> RunInfo | None:
        """The run as this process created it, while its creation is not projected; else None
        (read it from the projection)."""
        entry = self._created.get((tenant_id, run_id))
        if entry is None:
            return None
        if self._projected(entry.token):
            del self._created[(tenant_id, run_id)]
            return None
        return entry.info

    def remember_run(self, tenant_id: str, info: RunInfo) -> None:
        """Update a created run that is still unprojected (its status or end time changed)."""
        entry = self._created.get((tenant_id, info.run_id))
        if entry is not None:
            entry.info = info

    async def settle(self, principal: Principal) -> None:
        """Return once every write `principal` had acknowledged here is projected (503 after the
        write wait)."""
        caller = (principal.tenant_id, principal.key_id)
        await self._settle(self._callers, caller)

    async def settle_params(self, tenant_id: str, run_id: str) -> None:
        """Return once the params logged here for the run are projected (503 after the write wait)."""
        await self._settle(self._params, (tenant_id, run_id))

    def sweep(self) -> None:
        """Drop the entries whose writes are all projected."""
        for tokens in (self._callers, self._params):
            for key in [k for k, token in tokens.items() if self._projected(token)]:
                del tokens[key]
        for run in [k for k, entry in self._created.items() if self._projected(entry.token)]:
            del self._created[run]
        self._next_sweep = max(_MIN_SWEEP, 2 * len(self))

    # ------------------------------------------------------------------ internals

    async def _settle(self, tokens: dict[_Caller, ConsistencyToken], key: _Caller) -> None:
        token = tokens.get(key)
        if token is None:
            return
        if not await self._writer.wait_for(token):
            raise TemporarilyUnavailable(
                "earlier writes of this caller are not projected yet; retry", headers={"Retry-After": "1"}
            )
        if tokens.get(key) is token:  # nothing newer was written while waiting
            del tokens[key]

    def _projected(self, token: ConsistencyToken) -> bool:
        waiter = self._writer.waiter
        known, position = waiter.position_if_known(token, self._writer.publisher.incarnation)
        if not known:
            return False  # carried over to the current broker; where to is being loaded
        if position is None:
            return True  # that broker's log is gone: nothing more of it will be projected
        return all(
            waiter.committed(position.incarnation, position.topic, partition) >= offset
            for partition, offset in position.offsets
        )
