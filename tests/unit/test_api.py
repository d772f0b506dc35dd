"""The typed API: examples parse, helpers convert units, and the committed CRDs match the models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from wattkeeper.api import EnergyBudget, EnergyProfile, LLMService, crdgen, duration_seconds, quantity_value
from wattkeeper.api.common import LabelSelector

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"LLMService": LLMService, "EnergyBudget": EnergyBudget, "EnergyProfile": EnergyProfile}


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    KINDS[doc["kind"]].model_validate(doc)


def test_committed_crds_match_the_models() -> None:
    generated = crdgen.generate()
    for folder in crdgen.DEFAULT_OUTPUTS:
        for name, text in generated.items():
            committed = (ROOT / folder / name).read_text()
            assert committed == text, f"{folder}/{name} is stale: run `make crds`"
        extra = {p.name for p in (ROOT / folder).glob("*.yaml")} - set(generated)
        assert not extra, f"{folder} holds CRDs no model generates: {extra}"


def test_every_spec_field_has_a_description() -> None:
    def walk(node: dict, path: str) -> list[str]:
        missing = [] if node.get("description") or path.endswith("metadata") else [path]
        for key, child in node.get("properties", {}).items():
            missing += walk(child, f"{path}.{key}")
        if "items" in node and node["items"].get("type") == "object":
            missing += walk(node["items"], f"{path}[]")
        return missing

    for model in crdgen.RESOURCE_MODELS:
        schema = crdgen.openapi_schema(model)
        missing = walk(schema["properties"]["spec"], "spec")
        assert not missing, f"{model.kind}: fields without a description: {missing}"


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="malformed duration"):
        duration_seconds("5 minutes")


@pytest.mark.parametrize(("text", "value"), [("80Gi", 80 * 2**30), ("500M", 5e8), ("1.5", 1.5), ("100m", 0.1)])
def test_quantities(text: str, value: float) -> None:
    assert quantity_value(text) == pytest.approx(value)


def test_model_rejects_what_the_schema_rejects() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())
    doc["spec"]["slo"]["ttftP95Seconds"] = 0
    with pytest.raises(ValidationError, match=r"ttft_p95_seconds|ttftP95Seconds"):
        LLMService.model_validate(doc)


def test_label_selector_semantics() -> None:
    sel = LabelSelector.model_validate({"matchLabels": {"team": "chat"},
                                        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}]})
    assert sel.matches({"team": "chat", "tier": "prod"})
    assert not sel.matches({"team": "chat", "tier": "dev"})
    assert not sel.matches({"team": "search"})
    assert LabelSelector().matches({"anything": "x"})
