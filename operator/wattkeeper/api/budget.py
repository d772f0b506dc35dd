"""EnergyBudget: how much GPU power and energy a set of LLMServices may use."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field

from .common import CONDITIONS_FIELD_EXTRA, ApiModel, Condition, Duration, LabelSelector, ObjectMeta, StatusModel


class PowerLimit(ApiModel):
    """A cap on average GPU power."""

    limit_watts: float = Field(
        description="Average GPU power the selected services may draw together, in watts.", gt=0, le=1e9
    )
    window: Duration = Field(
        default="5m", description="Window over which power is averaged against the limit (30s, 5m, 1h)."
    )


class EnergyAllowance(ApiModel):
    """An energy allowance per accounting period."""

    limit_kilowatt_hours: float = Field(
        description="GPU energy the selected services may use in one period, in kWh.", gt=0, le=1e9
    )
    period: Duration = Field(default="24h", description="Accounting period; usage resets at its start (24h).")


class Enforcement(StrEnum):
    ENFORCE = "Enforce"
    ADVISE = "Advise"


class EnergyBudgetSpec(ApiModel):
    """The user's intent for an energy budget. The operator never writes it."""

    selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Which LLMServices in the namespace the budget governs. Empty selects them all.",
    )
    power: PowerLimit | None = Field(default=None, description="Cap on average GPU power.")
    energy: EnergyAllowance | None = Field(default=None, description="Energy allowance per period.")
    enforcement: Enforcement = Field(
        default=Enforcement.ENFORCE,
        description="Enforce: services re-plan within their allocation. Advise: record what would change, "
        "change nothing.",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "has(self.power) || has(self.energy)",
                 "message": "a budget needs power, energy or both", "reason": "FieldValueRequired"},
            ]
        }
    }


class ServiceAllocation(StatusModel):
    """The watts allocated to one service."""

    service: str = Field(description="LLMService name.")
    priority: int = Field(default=100, description="The service's priority.")
    watts: float = Field(description="Allocated watts.")
    minimum_watts: float | None = Field(
        default=None,
        description="Least allocation under which the service's own planner meets its SLOs: 99% of requests within "
        "both thresholds, with its learned latency margins and the 4% headroom it keeps under an allocation.",
    )
    floor_watts: float | None = Field(
        default=None, description="What the service's smallest fleet draws at its load; never allocated less."
    )
    degraded: bool = Field(default=False, description="Whether the allocation is below what the SLOs need.")
    reason: str = Field(
        default="", description="Why this allocation: its priority, and whether its SLO is met or what it lacks."
    )


class EnergyBudgetStatus(StatusModel):
    """What the operator measured and allocated. Written only by the operator."""

    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    measured_watts: float | None = Field(default=None, description="Measured GPU power of the selected services, W.")
    window_average_watts: float | None = Field(default=None, description="Average power over the window, W.")
    projected_watts: float | None = Field(default=None, description="Power the current plans are predicted to draw.")
    period_start: datetime | None = Field(default=None, description="Start of the current accounting period.")
    energy_used_kilowatt_hours: float | None = Field(default=None, description="Energy used this period, kWh.")
    remaining_kilowatt_hours: float | None = Field(default=None, description="Energy left this period, kWh.")
    burn_rate_watts: float | None = Field(default=None, description="Recent average power, W.")
    forecast_exhaustion: datetime | None = Field(
        default=None, description="When the allowance runs out at the burn rate; unset when it lasts the period."
    )
    last_accounted_at: datetime | None = Field(default=None, description="When energy was last accounted.")
    services: list[str] = Field(default_factory=list, description="Services the budget selects.")
    allocations: list[ServiceAllocation] = Field(default_factory=list, description="Watts for each service.")
    power_samples: list[list[float]] = Field(
        default_factory=list,
        description="Recent [unix seconds, watts] samples for the window average (kept so a restart loses nothing).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, WithinBudget, TelemetryAvailable.",
        json_schema_extra=CONDITIONS_FIELD_EXTRA,
    )


class EnergyBudget(ApiModel):
    """A cap on GPU power and an energy allowance, shared by the LLMServices it selects."""

    kind: ClassVar[str] = "EnergyBudget"
    plural: ClassVar[str] = "energybudgets"
    singular: ClassVar[str] = "energybudget"
    short_names: ClassVar[list[str]] = ["ebudget", "eb"]
    printer_columns: ClassVar[list[dict[str, Any]]] = [
        {"name": "Limit W", "type": "number", "jsonPath": ".spec.power.limitWatts"},
        {"name": "Measured W", "type": "number", "jsonPath": ".status.measuredWatts"},
        {"name": "Used kWh", "type": "number", "jsonPath": ".status.energyUsedKilowattHours"},
        {"name": "Remaining kWh", "type": "number", "jsonPath": ".status.remainingKilowattHours"},
        {"name": "Mode", "type": "string", "jsonPath": ".spec.enforcement"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    api_version: str = Field(default="wattkeeper.io/v1alpha1", alias="apiVersion")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EnergyBudgetSpec
    status: EnergyBudgetStatus = Field(default_factory=EnergyBudgetStatus)

    model_config = ApiModel.model_config | {"extra": "ignore"}
