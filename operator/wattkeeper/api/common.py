"""Building blocks shared by the three resources: enums, quantities, durations, conditions.

Every field carries a description: the CRD generator turns it into `kubectl explain` text.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "wattkeeper.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the Kubernetes API holds it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status models accept fields they do not know, so an older operator can read a newer status."""

    model_config = ConfigDict(extra="ignore")


class Precision(StrEnum):
    """Numeric format of the served weights (and activations where the format has them)."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4_AWQ = "int4-awq"
    INT4_GPTQ = "int4-gptq"
    MXFP4 = "mxfp4"


class AcceleratorType(StrEnum):
    """GPU models that the energy model's hardware catalog knows."""

    H100 = "H100"
    H200 = "H200"
    B200 = "B200"
    A100 = "A100"
    L40S = "L40S"


class Architecture(StrEnum):
    DENSE = "dense"
    MOE = "moe"


# Kubernetes resource quantity, e.g. 80Gi, 500M, 1.5. The same grammar as apimachinery's resource.Quantity.
QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$"
# Go-style duration as Kubernetes users write it: 30s, 5m, 24h, 1h30m.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]

_DURATION_UNITS_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY_SUFFIXES = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}


def duration_seconds(duration: str) -> float:
    """Seconds in a duration string such as `1h30m`."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"malformed duration {duration!r}: expected for example 30s, 5m, 24h")
    return sum(float(n) * _DURATION_UNITS_SECONDS[u] for n, u in parts)


def quantity_value(quantity: str) -> float:
    """The number a Kubernetes quantity stands for (80Gi -> 85899345920.0)."""
    match = re.fullmatch(r"[+]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?", quantity)
    if not match:
        raise ValueError(f"malformed quantity {quantity!r}: expected for example 80Gi or 500M")
    number = float(match.group(1) + (match.group(2) or ""))
    return number * _QUANTITY_SUFFIXES[match.group(3) or ""]


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """The state of one aspect of the object, in the shape of metav1.Condition."""

    type: str = Field(description="Condition type, for example Ready, SLOMet or WithinBudget.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word for why the condition last changed.")
    message: str = Field(default="", description="Human-readable details of the last change.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set from."
    )


CONDITIONS_FIELD_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as in metav1.LabelSelectorRequirement."""

    key: str = Field(description="The label key the requirement applies to.", min_length=1)
    operator: str = Field(
        description="In, NotIn, Exists or DoesNotExist.",
        json_schema_extra={"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
    )
    values: list[str] = Field(
        default_factory=list, description="Values for In and NotIn; empty for Exists and DoesNotExist."
    )


class LabelSelector(ApiModel):
    """A label query over LLMServices, as in metav1.LabelSelector. Empty selects all in the namespace."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a service must carry, every one of them."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Set-based requirements a service must meet, every one of them."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether an object with these labels is selected (the apimachinery semantics)."""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    def as_query(self) -> str | None:
        """The selector as a LIST's `labelSelector`, so that the apiserver sends only the selected objects; None
        when it selects everything or holds a key or value the query syntax cannot carry (a value that is no
        label value selects nothing anyway): list everything then, and let `matches` decide."""
        terms = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            if req.operator in ("In", "NotIn") and req.values:
                terms.append(f"{req.key} {req.operator.lower()} ({','.join(sorted(req.values))})")
            elif req.operator == "Exists":
                terms.append(req.key)
            elif req.operator == "DoesNotExist":
                terms.append(f"!{req.key}")
            else:
                return None  # In or NotIn without values: leave it to `matches`
        keys = [*self.match_labels, *(r.key for r in self.match_expressions)]
        values = [*self.match_labels.values(), *(v for r in self.match_expressions for v in r.values)]
        if not terms or not all(map(_label_key, keys)) or not all(map(_label_value, values)):
            return None
        return ",".join(terms)


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _label_value(value: str) -> bool:
    return _LABEL_NAME.fullmatch(value) is not None  # an empty one, valid but rare, lists everything


def _label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return _LABEL_NAME.fullmatch(name) is not None and (not prefix or _DNS_SUBDOMAIN.fullmatch(prefix) is not None)


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads. Free-form otherwise."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
