"""HTTP routes of comparisons and hyperparameter importance (thin: parse, call, shape)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from services.api.access import Access
from services.api.compare.repository import CompareRepository
from services.api.compare.schemas import CompareRequest, CompareResponse, ImportanceResponse
from services.api.compare.service import CompareService
from services.api.deps import Auth, ConsistentRead, RuntimeDep
from services.api.schemas import READ_RESPONSES

router = APIRouter(tags=["compare"])


async def get_service(runtime: RuntimeDep, principal: Auth) -> CompareService:
    """The comparison service acting for the caller."""
    return CompareService(CompareRepository(runtime.pool, runtime.clickhouse), Access(principal))


Service = Annotated[CompareService, Depends(get_service)]


@router.post(
    "/compare", response_model=CompareResponse, responses=READ_RESPONSES, dependencies=[ConsistentRead]
)
async def compare(body: CompareRequest, service: Service) -> CompareResponse:
    """Compare runs or groups of runs: performance, resources, seed stability, fairness.

    A read (POST only for its body): any caller who may read the runs. See docs/compare.md.

    **Fairness reads only metric keys named `[prefix/]fairness/{attribute}/{group}/{metric}`**,
    e.g. `val/fairness/sex/female/tpr` (and the logged gaps
    `[prefix/]fairness/{attribute}/demographic_parity_difference` and `.../equalized_odds_difference`);
    a run whose subgroup metrics have other names gets no fairness entry. The SDK's
    `rl.log_fairness_metrics(y_true, y_pred, df["sex"])` (runledger_sdk) logs exactly these keys.
    """
    return await service.compare(body)


@router.get(
    "/experiments/{experiment_id}/hyperparameter-importance",
    response_model=ImportanceResponse,
    responses=READ_RESPONSES,
    dependencies=[ConsistentRead],
)
async def hyperparameter_importance(
    experiment_id: str,
    service: Service,
    metric: Annotated[
        list[str], Query(max_length=20, description="Repeatable; default: the 5 metrics most runs logged.")
    ] = [],  # noqa: B006
    filter: Annotated[str | None, Query(max_length=10_000, description="Run-search filter.")] = None,
    exclude: Annotated[
        list[str] | None, Query(description="Repeatable: params left out (default: seed).")
    ] = None,
    model: Literal["random_forest", "gradient_boosting"] = "random_forest",
    n_repeats: Annotated[int, Query(ge=1, le=50)] = 10,
) -> ImportanceResponse:
    """Which params explain a metric across the experiment's runs, ranked, with uncertainty.

    Permutation importance (drop of held-out R^2) of a forest fit on params -> metric in K-fold
    cross-validation; see docs/compare.md.
    """
    return await service.importance(
        experiment_id,
        metric,
        filter_string=filter,
        exclude=["seed"] if exclude is None else exclude,
        model=model,
        n_repeats=n_repeats,
    )
