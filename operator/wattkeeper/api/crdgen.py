"""Generate CustomResourceDefinitions from the pydantic models (`make crds` / `wattkeeper crds`).

The models are the one source of truth. Pydantic emits JSON Schema 2020-12; Kubernetes wants a structural
OpenAPI v3.0 schema, so this module inlines `$defs`, collapses `Optional[X]` to `X`, turns numeric
`exclusiveMinimum` into the v3.0 boolean form, and drops keywords a structural schema forbids.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from .budget import EnergyBudget
from .common import GROUP, VERSION
from .llmservice import LLMService
from .profile import EnergyProfile

RESOURCE_MODELS: tuple[type[LLMService] | type[EnergyBudget] | type[EnergyProfile], ...] = (
    LLMService,
    EnergyBudget,
    EnergyProfile,
)
CATEGORY = "wattkeeper"
# Output folders, relative to the repository root: the top-level copy users apply and the chart's copy.
DEFAULT_OUTPUTS = ("crds", "charts/wattkeeper/files/crds")

_DROP_KEYS = {"title", "$defs", "examples"}


class _FactoryDefaults(GenerateJsonSchema):
    """Emit defaults that come from default_factory too, so the apiserver fills nested objects.

    Without `default: {}` on `spec.scaling`, a user who leaves scaling out gets no minReplicas default and
    the CEL rules that read it fail with "no such key".
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return value.model_dump(by_alias=True, exclude_none=True, mode="json")
        if isinstance(value, (list, dict)) and value:
            return [v.value if hasattr(v, "value") else v for v in value] if isinstance(value, list) else value
        return NoDefault


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref, recursively; the referring node's own keys (description) win over the target's."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: Any) -> Any:
    """Rewrite one resolved JSON Schema node into Kubernetes' structural OpenAPI v3.0 form."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP_KEYS}
    # Optional[X] arrives as anyOf [X, null]: keep X, and the field stays optional by not being required.
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"unions other than Optional[X] cannot be expressed structurally: {branches}")
        node = {**branches[0], **node}
    if node.get("default", ...) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[plain] = node[bound]
            node[bound] = True
    # extra="forbid" emits additionalProperties: false, which a structural schema may not carry beside
    # properties; unknown fields are pruned by the apiserver and rejected by kubectl's strict validation.
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    return {key: _structural(value) for key, value in node.items()}


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """The structural schema of one resource's spec and status."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_FactoryDefaults)
    defs = raw.get("$defs", {})
    properties = _resolve(raw["properties"], defs)
    spec = _structural(properties["spec"])
    status = _structural(properties["status"])
    status.pop("default", None)
    return {
        "type": "object",
        "description": (model.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: wattkeeper.io/v1alpha1."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_manifest(model: type[Any]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{model.plural}.{GROUP}",
            # Helm keeps CRDs on uninstall, so uninstalling the chart never deletes users' resources.
            "annotations": {"helm.sh/resource-policy": "keep"},
            "labels": {"app.kubernetes.io/part-of": "wattkeeper"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": model.kind,
                "listKind": f"{model.kind}List",
                "plural": model.plural,
                "singular": model.singular,
                "shortNames": list(model.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(model.printer_columns),
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                }
            ],
        },
    }


def render_yaml(model: type[Any]) -> str:
    header = "# Generated by `make crds` from operator/wattkeeper/api. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd_manifest(model), sort_keys=False, width=120, allow_unicode=True)


def file_name(model: type[Any]) -> str:
    return f"{GROUP}_{model.plural}.yaml"


def generate() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {file_name(model): render_yaml(model) for model in RESOURCE_MODELS}


def write(root: Path, outputs: tuple[str, ...] = DEFAULT_OUTPUTS) -> list[Path]:
    written = []
    for folder in outputs:
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, text in generate().items():
            path = target / name
            path.write_text(text)
            written.append(path)
    return written


def _run(args: argparse.Namespace) -> int:
    for path in write(Path(args.root)):
        print(f"wrote {path}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("crds", help="generate the CRD YAML from the typed API")
    parser.add_argument("--root", default=".", help="repository root to write crds/ and the chart's copy under")
    parser.set_defaults(func=_run)
