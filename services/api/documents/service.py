"""Run document logic: the run must exist in the caller's tenant."""

from __future__ import annotations

from runledger.events.models import CodeStateCapturedPayload, EnvironmentCapturedPayload
from services.api.access import Access, readable_run
from services.api.documents.repository import DocumentRepository
from services.api.documents.schemas import RunDocuments
from services.api.runs.repository import RunRepository


class DocumentService:
    """What the document routes do, independent of HTTP."""

    def __init__(self, documents: DocumentRepository, runs: RunRepository, access: Access) -> None:
        """Act through tenant-scoped repositories, for a caller."""
        self._documents = documents
        self._runs = runs
        self._access = access

    async def for_run(self, run_id: str) -> RunDocuments:
        """The run's code state and environment (each null when not captured), or NotFound."""
        located, _ = await readable_run(self._access, self._runs, run_id)
        found = await self._documents.bound_to(located.tenant_id).for_run(run_id)
        code_state = found.get("code_state")
        environment = found.get("environment")
        return RunDocuments(
            code_state=None if code_state is None else CodeStateCapturedPayload.model_validate(code_state),
            environment=None
            if environment is None
            else EnvironmentCapturedPayload.model_validate(environment),
        )
