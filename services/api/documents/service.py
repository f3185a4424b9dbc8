"""Run document logic: the run must exist in the caller's tenant."""

from __future__ import annotations

from runledger.events.models import CodeStateCapturedPayload, EnvironmentCapturedPayload
from services.api.documents.repository import DocumentRepository
from services.api.documents.schemas import RunDocuments
from services.api.errors import NotFound
from services.api.runs.repository import RunRepository


class DocumentService:
    """What the document routes do, independent of HTTP."""

    def __init__(self, documents: DocumentRepository, runs: RunRepository) -> None:
        """Act through tenant-scoped repositories."""
        self._documents = documents
        self._runs = runs

    async def for_run(self, run_id: str) -> RunDocuments:
        """The run's code state and environment (each null when not captured), or NotFound."""
        if await self._runs.get_info(run_id) is None:
            raise NotFound(f"run {run_id!r} does not exist")
        found = await self._documents.for_run(run_id)
        code_state = found.get("code_state")
        environment = found.get("environment")
        return RunDocuments(
            code_state=None if code_state is None else CodeStateCapturedPayload.model_validate(code_state),
            environment=None
            if environment is None
            else EnvironmentCapturedPayload.model_validate(environment),
        )
