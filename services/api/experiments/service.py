"""Experiment logic: reads through the repository, writes as events."""

from __future__ import annotations

from runledger.events.codec import DEFAULT_EXPERIMENT_ID, experiment_id_for
from runledger.events.models import EventType
from services.api.access import Access, Located
from services.api.errors import AlreadyExists, InvalidParameter, NotFound
from services.api.experiments.repository import ExperimentFilters, ExperimentRepository
from services.api.experiments.schemas import Experiment, ExperimentList
from services.api.pagination import fingerprint, split_page, time_id_position
from services.api.principal import Principal
from services.api.writes import EventWriter, WriteReceipt, build_event


class ExperimentService:
    """What the experiment routes do, independent of HTTP."""

    def __init__(self, repository: ExperimentRepository, writer: EventWriter, principal: Principal) -> None:
        """Act for `principal` through its tenant-scoped repository."""
        self._repo = repository
        self._writer = writer
        self._principal = principal
        self._access = Access(principal)

    async def page(
        self, filters: ExperimentFilters, page_size: int, page_token: str | None
    ) -> ExperimentList:
        """One page of experiments and the token of the next."""
        self._access.require_listing()
        scope = fingerprint("experiments", filters.name_contains, filters.lifecycle.value)
        rows = await self._repo.page(
            filters,
            time_id_position(page_token, scope),
            page_size + 1,
            readable=self._access.readable(),
            shared=self._access.shared(),
        )
        page, next_token = split_page(rows, page_size, lambda e: [e.creation_time, e.experiment_id], scope)
        return ExperimentList(experiments=page, next_page_token=next_token)

    async def get(self, experiment_id: str) -> Experiment:
        """The experiment (the caller's, or one shared with its tenant), or NotFound."""
        return (await self._locate(experiment_id))[1]

    async def _locate(self, experiment_id: str) -> tuple[Located, Experiment]:
        own = await self._repo.get(experiment_id)
        located = self._access.locate(own is not None, experiment_id, f"experiment {experiment_id!r}")
        if own is not None:
            return located, own
        shared = await self._repo.bound_to(located.tenant_id).get(experiment_id)
        if shared is None:
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        return located, shared

    async def _writable(self, experiment_id: str) -> Experiment:
        located, experiment = await self._locate(experiment_id)
        self._access.require_write(located, f"experiment {experiment_id}")
        return experiment

    async def create(
        self, name: str, tags: dict[str, str], artifact_location: str | None
    ) -> tuple[str, WriteReceipt, Experiment | None]:
        """Emit ExperimentCreated; AlreadyExists when the name (or the id it derives) is taken."""
        self._access.require_create_experiment()
        if await self._repo.get_by_name(name) is not None:
            raise AlreadyExists(f"an experiment named {name!r} already exists")
        experiment_id = experiment_id_for(self._principal.tenant_id, name)
        holder = await self._repo.get(experiment_id)
        if holder is not None:
            # Ids derive from names (ADR 0005): a renamed experiment still holds the id of
            # its old name, and the projector would fold the new one into it.
            raise AlreadyExists(
                f"the name {name!r} belonged to experiment {experiment_id} (now {holder.name!r});"
                " it cannot be reused"
            )
        payload: dict[str, object] = {"name": name, "tags": tags}
        if artifact_location:
            payload["artifact_location"] = artifact_location
        event = build_event(
            self._principal, EventType.EXPERIMENT_CREATED, payload, experiment_id=experiment_id
        )
        receipt = await self._writer.write(self._principal, [event])
        created = await self._repo.get(experiment_id) if receipt.projected else None
        return experiment_id, receipt, created

    async def rename(self, experiment_id: str, name: str) -> tuple[WriteReceipt, Experiment | None]:
        """Emit ExperimentRenamed; AlreadyExists when another experiment has that name."""
        current = await self._writable(experiment_id)
        if current.name != name and await self._repo.get_by_name(name) is not None:
            raise AlreadyExists(f"an experiment named {name!r} already exists")
        event = build_event(
            self._principal, EventType.EXPERIMENT_RENAMED, {"name": name}, experiment_id=experiment_id
        )
        receipt = await self._writer.write(self._principal, [event])
        return receipt, (await self._repo.get(experiment_id) if receipt.projected else None)

    async def delete(self, experiment_id: str) -> tuple[WriteReceipt, Experiment | None]:
        """Emit ExperimentDeleted (a soft delete: the experiment moves to lifecycle_stage deleted)."""
        await self._writable(experiment_id)
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            raise InvalidParameter("the default experiment (id 0) cannot be deleted")
        event = build_event(self._principal, EventType.EXPERIMENT_DELETED, {}, experiment_id=experiment_id)
        receipt = await self._writer.write(self._principal, [event])
        return receipt, (await self._repo.get(experiment_id) if receipt.projected else None)
