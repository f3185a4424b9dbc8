"""HTTP routes of run documents (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.api.access import Access
from services.api.deps import Auth, ConsistentRead, RuntimeDep
from services.api.documents.repository import DocumentRepository
from services.api.documents.schemas import RunDocuments
from services.api.documents.service import DocumentService
from services.api.runs.repository import RunRepository
from services.api.schemas import READ_RESPONSES

router = APIRouter(tags=["runs"])


async def get_service(runtime: RuntimeDep, principal: Auth) -> DocumentService:
    """The document service acting for the caller."""
    return DocumentService(
        DocumentRepository(runtime.pool, principal), RunRepository(runtime.pool, principal), Access(principal)
    )


Service = Annotated[DocumentService, Depends(get_service)]


@router.get(
    "/runs/{run_id}/documents",
    response_model=RunDocuments,
    responses=READ_RESPONSES,
    dependencies=[ConsistentRead],
)
async def get_documents(run_id: str, service: Service) -> RunDocuments:
    """The code state and environment the run captured at its start (null when it captured none).

    The SDK captures both for every top-level run (RUNLEDGER_CAPTURE_CODE_STATE,
    RUNLEDGER_CAPTURE_ENVIRONMENT); `code_state.diff` holds the size-capped uncommitted diff.
    """
    return await service.for_run(run_id)
