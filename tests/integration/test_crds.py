"""The generated CRDs on a real kube-apiserver: install, explain, accept the examples, reject bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.support.wait import wait_for

from .conftest import apply_json

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

VALID_SERVICE = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())
VALID_BUDGET = yaml.safe_load((ROOT / "examples" / "energybudget.yaml").read_text())


def test_crds_are_established(kubectl, crds_installed) -> None:  # type: ignore[no-untyped-def]
    out = kubectl("get", "crd", "-o", "json").stdout
    names = {item["metadata"]["name"] for item in json.loads(out)["items"]}
    assert {"llmservices.wattkeeper.io", "energybudgets.wattkeeper.io", "energyprofiles.wattkeeper.io"} <= names
    # short names and the category resolve
    assert kubectl("get", "llms,ebudget,eprofile", "-A").returncode == 0
    assert kubectl("get", "wattkeeper", "-A").returncode == 0


def test_explain_prints_our_descriptions(kubectl, crds_installed) -> None:  # type: ignore[no-untyped-def]
    # The apiserver publishes a new CRD's OpenAPI v3 schema (what explain reads) asynchronously, some seconds after
    # the CRD is Established; on a busy machine more.
    wait_for("the CRDs' OpenAPI schema", lambda: kubectl("explain", "llmservice.spec.slo", check=False).returncode == 0,
             60, every=1.0)
    out = kubectl("explain", "llmservice.spec.slo").stdout
    assert "Time to first token, 95th percentile, in seconds." in out
    assert "ttftP95Seconds" in out and "itlP95Seconds" in out
    assert "GPU energy the selected services may use in one period, in kWh." in kubectl(
        "explain", "energybudget.spec.energy").stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(kubectl, namespace, path: Path) -> None:  # type: ignore[no-untyped-def]
    result = kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    assert "serverside-applied" in result.stdout


def _service(**patch_paths: object) -> dict:
    obj = copy.deepcopy(VALID_SERVICE)
    for dotted, value in patch_paths.items():
        node = obj
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return obj


DELETE = object()

# (id, object, text the apiserver's message must contain: the field it names)
INVALID = [
    ("unknown-precision", _service(spec__quality__allowedPrecisions=["bf16", "fp3"]),
     "spec.quality.allowedPrecisions[1]"),
    ("negative-parameters", _service(spec__model__parametersBillions=-8), "spec.model.parametersBillions"),
    ("min-above-max-replicas", _service(spec__scaling={"minReplicas": 5, "maxReplicas": 2}),
     "spec.scaling.minReplicas"),
    ("missing-model", _service(spec__model=DELETE), "spec.model"),
    ("zero-ttft-slo", _service(spec__slo={"ttftP95Seconds": 0, "itlP95Seconds": 0.05}), "spec.slo.ttftP95Seconds"),
    ("malformed-memory-quantity", _service(spec__accelerator={"type": "H100", "memory": "80 gigs"}),
     "spec.accelerator.memory"),
    ("unknown-gpu", _service(spec__accelerator={"type": "H800"}), "spec.accelerator.type"),
    ("tp-not-power-of-two", _service(spec__accelerator={"maxTensorParallel": 3}),
     "spec.accelerator.maxTensorParallel"),
    ("pinned-without-config", _service(spec__mode="Pinned"), "spec.pinned"),
    ("pinned-precision-not-allowed", _service(spec__mode="Pinned", spec__pinned={"precision": "int4-awq"}),
     "spec.pinned.precision"),
    ("empty-precision-list", _service(spec__quality__allowedPrecisions=[]), "spec.quality.allowedPrecisions"),
    ("gpu-memory-utilization-above-one", _service(spec__engine={"gpuMemoryUtilization": 1.5}),
     "spec.engine.gpuMemoryUtilization"),
    ("unknown-mode", _service(spec__mode="Manual"), "spec.mode"),
    ("negative-priority", _service(spec__priority=-1), "spec.priority"),
    # vLLM 0.11.1 cannot make AWQ weights on load: an allowed precision needs a checkpoint.
    ("precision-without-checkpoint", _service(spec__quality__allowedPrecisions=["bf16", "int4-awq"]),
     "spec.quality.allowedPrecisions"),
    ("quantized-source-without-bf16-variant", _service(spec__model__sourcePrecision="mxfp4",
                                                        spec__quality__allowedPrecisions=["bf16"]),
     "spec.quality.allowedPrecisions"),
]


def _budget(spec: dict) -> dict:
    obj = copy.deepcopy(VALID_BUDGET)
    obj["spec"] = spec
    return obj


INVALID += [
    ("budget-negative-watts", _budget({"power": {"limitWatts": -100}}), "spec.power.limitWatts"),
    ("budget-malformed-window", _budget({"power": {"limitWatts": 1000, "window": "five minutes"}}),
     "spec.power.window"),
    ("budget-without-limits", _budget({"enforcement": "Enforce"}), "spec"),
    ("budget-unknown-enforcement", _budget({"power": {"limitWatts": 1000}, "enforcement": "Maybe"}),
     "spec.enforcement"),
]


@pytest.mark.parametrize(("obj", "field"), [(o, f) for _, o, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_specs_are_rejected_naming_the_field(kubectl, namespace, obj: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    result = apply_json(kubectl, obj, namespace, check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(obj)}"
    assert "is invalid" in result.stderr or "Invalid value" in result.stderr or "Required value" in result.stderr, \
        result.stderr
    assert field in result.stderr, result.stderr


def test_unknown_field_is_rejected(kubectl, namespace) -> None:  # type: ignore[no-untyped-def]
    result = apply_json(kubectl, _service(spec__slo={"ttftP95Seconds": 1, "itlP95Seconds": 0.1, "p99": 2}),
                        namespace, check=False)
    assert result.returncode != 0
    assert ".spec.slo.p99: field not declared in schema" in result.stderr


def test_status_written_through_the_main_resource_is_ignored(api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    custom = client.CustomObjectsApi(api_client)
    body = copy.deepcopy(VALID_SERVICE)
    body["status"] = {"replicas": 42}
    created = custom.create_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", body)
    assert "replicas" not in (created.get("status") or {})
    created["status"] = {"replicas": 7}
    updated = custom.replace_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices",
                                                      "llama-8b", created)
    assert "replicas" not in (updated.get("status") or {})
    # ... while the status subresource takes it
    updated["status"] = {"replicas": 3}
    patched = custom.replace_namespaced_custom_object_status("wattkeeper.io", "v1alpha1", namespace, "llmservices",
                                                             "llama-8b", updated)
    assert patched["status"]["replicas"] == 3


def test_defaults_are_filled_by_the_apiserver(api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    custom = client.CustomObjectsApi(api_client)
    body = copy.deepcopy(VALID_SERVICE)
    del body["spec"]["scaling"]
    created = custom.create_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, "llmservices", body)
    assert created["spec"]["scaling"] == {"minReplicas": 1, "maxReplicas": 4}
    assert created["spec"]["reconfiguration"]["cooldownSeconds"] == 300


def test_two_variants_of_one_precision_are_rejected(kubectl, namespace) -> None:  # type: ignore[no-untyped-def]
    """variants is a list map keyed by precision: the apiserver refuses a second copy of one precision."""
    obj = _service(spec__model__variants=[{"precision": "fp8", "source": "a/b"}, {"precision": "fp8", "source": "c/d"}])
    result = apply_json(kubectl, obj, namespace, check=False)
    assert result.returncode != 0 and 'duplicate entries for key [precision="fp8"]' in result.stderr, result.stderr
