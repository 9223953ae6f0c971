"""Shared building blocks of the slm.io/v1alpha1 API: the pydantic base class, conditions, references.

Every model here is the single source of truth for one part of a CRD schema: ``crdgen`` turns the
pydantic JSON schema into a structural OpenAPI v3 schema. Kubernetes-only schema keywords
(``x-kubernetes-validations``, list types) are attached with :func:`k8s` and :func:`cel`; the same rules
are enforced in Python by validators so that the offline CLI rejects exactly what the API server rejects.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from slm_operator.api.quantity import QUANTITY_PATTERN

# DNS-1123 subdomain / label patterns of Kubernetes object names.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = QUANTITY_PATTERN
# A duration as the Gateway API writes it (GEP-2257): 1 to 4 parts of up to 5 digits with a unit, e.g. `1h30m`,
# `10s`, `250ms`. CEL's `duration()` parses every such string.
DURATION = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(text: str) -> float:
    """Seconds of a GEP-2257 duration (``1m30s`` -> 90.0); raises ValueError for anything else."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration such as '30s', '1m30s' or '250ms'")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def k8s(*rules: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Schema extras for a model or a field: CEL rules plus ``x-kubernetes-*`` keywords.

    Keyword names are written in snake case and become ``x-kubernetes-<kebab-case>``
    (``list_type="map"`` -> ``x-kubernetes-list-type: map``).
    """
    out: dict[str, Any] = {}
    if rules:
        out["x-kubernetes-validations"] = list(rules)
    for key, value in extra.items():
        out["x-kubernetes-" + key.replace("_", "-")] = value
    return out


def max_len(model: type[BaseModel], field: str) -> int:
    """The ``max_length`` a model's field declares (the CRD schema's ``maxLength``/``maxItems``).

    Code that truncates a value to fit a field reads the limit here, so the schema stays the one source.
    """
    for item in model.model_fields[field].metadata:
        limit = getattr(item, "max_length", None)  # annotated_types.MaxLen, which pydantic puts there
        if isinstance(limit, int):
            return limit
    raise LookupError(f"{model.__name__}.{field} declares no max_length")


class ApiModel(BaseModel):
    """Base of every API object: camelCase JSON, unknown fields rejected (as strict field validation does)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        use_enum_values=False,
        validate_default=False,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The JSON form as the API server stores it (camelCase, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One observation of the object's state, in the shape of ``metav1.Condition``."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, e.g. `Ready`.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The `metadata.generation` the condition was set for; older than the object's "
        "generation means the condition is out of date.",
    )
    last_transition_time: str = Field(
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="Last time the condition changed from one status to another (RFC 3339).",
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")


CONDITIONS_FIELD: dict[str, Any] = {
    "max_length": 16,
    "json_schema_extra": k8s(list_type="map", list_map_keys=["type"]),
    "description": "Current observations of the object's state (`Ready` summarises them).",
}


class LocalObjectReference(ApiModel):
    """A reference to an object by name (in the same namespace for namespaced objects)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the object.")


class LabelSelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    key: str = Field(min_length=1, max_length=317, description="Label key the selector applies to.")
    operator: LabelSelectorOperator = Field(description="How the key relates to the values.")
    values: list[Annotated[str, Field(max_length=63)]] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=k8s(list_type="atomic"),
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions`` are ANDed)."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "has(self.matchLabels) || has(self.matchExpressions)",
                "a node selector must set `matchLabels` or `matchExpressions`; an empty selector "
                "would take every node of the cluster",
            )
        )
    )

    match_labels: dict[str, str] | None = Field(
        default=None,
        json_schema_extra={"maxProperties": 32, "additionalProperties": {"type": "string", "maxLength": 63}},
        description="Labels a node must carry, e.g. `nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`.",
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None,
        max_length=16,
        json_schema_extra=k8s(list_type="atomic"),
        description="Label requirements a node must meet.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> LabelSelector:
        if self.match_labels is None and self.match_expressions is None:
            raise ValueError(
                "a node selector must set `matchLabels` or `matchExpressions`; an empty selector "
                "would take every node of the cluster"
            )
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a label set satisfies this selector."""
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions or []:
            present = req.key in labels
            vals = req.values or []
            if req.operator is LabelSelectorOperator.IN and (not present or labels[req.key] not in vals):
                return False
            if req.operator is LabelSelectorOperator.NOT_IN and present and labels[req.key] in vals:
                return False
            if req.operator is LabelSelectorOperator.EXISTS and not present:
                return False
            if req.operator is LabelSelectorOperator.DOES_NOT_EXIST and present:
                return False
        return True


class ObjectMeta(ApiModel):
    """The part of ``metadata`` slm-operator reads. Other metadata fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
