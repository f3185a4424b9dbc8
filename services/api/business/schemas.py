"""Request and response shapes of business metrics and the stakeholder report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CATEGORIES = ("conversion_rate_impact", "cost_savings", "revenue_lift", "customer_satisfaction", "other")
Category = Literal["conversion_rate_impact", "cost_savings", "revenue_lift", "customer_satisfaction", "other"]
Level = Literal["version", "stage", "model"]


class BusinessMetric(BaseModel):
    """A metric key declared a business metric, with a unit or a currency and an owner."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        min_length=1, max_length=250, description="The metric key runs log, e.g. biz/revenue_lift."
    )
    category: Category
    unit: str = Field("", max_length=50, description='e.g. "%", "NPS points", "USD/month".')
    currency: str = Field("", pattern=r"^([A-Z]{3})?$", description="ISO 4217 code, e.g. USD.")
    owner: str = Field(min_length=1, max_length=200, description="Who answers for it (a person or team).")
    description: str = Field("", max_length=2_000)
    direction: Literal["min", "max"] = Field("max", description="max: a higher value is better.")

    @model_validator(mode="after")
    def _unit_or_currency(self) -> BusinessMetric:
        if not self.unit and not self.currency:
            raise ValueError("give a unit or a currency")
        return self


class DeclaredBusinessMetric(BusinessMetric):
    """A declaration as stored."""

    model_config = ConfigDict(extra="ignore")

    updated_at: int = Field(description="ms since the epoch.")
    updated_by: str


class BusinessMetricList(BaseModel):
    """The tenant's business metrics, by key."""

    business_metrics: list[DeclaredBusinessMetric]


class BusinessReport(BaseModel):
    """The stakeholder roll-up: business metrics of registered model versions."""

    level: Level
    columns: list[str]
    rows: list[dict[str, Any]]
