"""The typed API of wattkeeper.io/v1alpha1: one source of truth for the CRDs and the operator.

Imports neither kopf nor kubernetes (enforced by import-linter).
"""

from .budget import EnergyBudget, EnergyBudgetSpec, EnergyBudgetStatus, Enforcement, ServiceAllocation
from .common import API_VERSION, GROUP, VERSION, AcceleratorType, Condition, Precision, duration_seconds, quantity_value
from .llmservice import (
    Fallback,
    LLMService,
    LLMServiceSpec,
    LLMServiceStatus,
    PlanStatus,
    ServiceMode,
    ServingConfigSpec,
)
from .profile import EnergyProfile, EnergyProfileSpec, ProfilePoint

RESOURCES = (LLMService, EnergyBudget, EnergyProfile)

__all__ = [
    "API_VERSION", "GROUP", "RESOURCES", "VERSION", "AcceleratorType", "Condition", "EnergyBudget",
    "EnergyBudgetSpec", "EnergyBudgetStatus", "EnergyProfile", "EnergyProfileSpec", "Enforcement", "Fallback",
    "LLMService", "LLMServiceSpec", "LLMServiceStatus", "PlanStatus", "Precision", "ProfilePoint",
    "ServiceAllocation", "ServiceMode", "ServingConfigSpec", "duration_seconds", "quantity_value",
]
