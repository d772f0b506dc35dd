"""The operator never fights a GitOps tool: the examples applied with server-side apply by a "gitops" field
manager, reconciled by the operator, re-applied without a conflict, and `kubectl diff` shows nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / name for name in ("energybudget.yaml", "llmservice-llama-8b.yaml",
                                                   "llmservice-pinned.yaml", "energyprofile.yaml")]
OBJECTS = [("energybudgets", "chat-team"), ("llmservices", "llama-8b")]


def gitops_apply(kubectl, namespace: str):  # type: ignore[no-untyped-def]
    args = ["apply", "--server-side", "--field-manager=gitops", "-n", namespace]
    for path in EXAMPLES:
        args += ["-f", str(path)]
    return kubectl(*args, check=False)


def _paths(fields: dict, prefix: str = "") -> set[str]:
    """Flatten a managedFields FieldsV1 tree into dotted paths of its leaves."""
    out = set()
    for key, sub in fields.items():
        if key == ".":
            continue
        path = f"{prefix}.{key[2:]}" if key.startswith(("f:", "k:", "v:")) else f"{prefix}.{key}"
        out |= _paths(sub, path) if sub else {path}
    return out


def test_operator_and_gitops_share_objects_without_conflict(api_client, kubectl, namespace) -> None:  # type: ignore[no-untyped-def]
    from wattkeeper.controller.runner import OperatorThread, build_dependencies
    from wattkeeper.controller.settings import OperatorSettings

    first = gitops_apply(kubectl, namespace)
    assert first.returncode == 0, first.stderr
    custom = client.CustomObjectsApi(api_client)

    def status(plural: str, name: str) -> dict:
        return custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, plural, name).get(
            "status") or {}

    settings = OperatorSettings(interval_seconds=2, namespaces=[namespace], telemetry="prometheus",
                                prometheus_url="http://127.0.0.1:1")
    with OperatorThread(build_dependencies(settings, api_client)):
        wait_for("a plan", lambda: status("llmservices", "llama-8b").get("plan"))
        wait_for("an allocation", lambda: status("energybudgets", "chat-team").get("allocations"))
        wait_for("the Deployment", lambda: client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items)
        time.sleep(4)  # a couple of control-loop ticks

        again = gitops_apply(kubectl, namespace)
        assert again.returncode == 0, again.stderr
        assert "conflict" not in (again.stdout + again.stderr).lower()

        args = ["diff", "--server-side", "--field-manager=gitops", "-n", namespace]
        for path in EXAMPLES:
            args += ["-f", str(path)]
        diff = kubectl(*args, check=False)
        assert diff.returncode == 0, f"kubectl diff found changes:\n{diff.stdout}\n{diff.stderr}"
        assert diff.stdout == ""

    # Field ownership: every spec field is gitops'; the operator (and kopf) own only status and their own
    # wattkeeper.io/ annotations.
    for plural, name in OBJECTS:
        obj = custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", namespace, plural, name)
        managers = {(e["manager"], e.get("subresource")) for e in obj["metadata"]["managedFields"]}
        assert ("gitops", None) in managers and any(sub == "status" for _, sub in managers), managers
        for entry in obj["metadata"]["managedFields"]:
            paths = _paths(entry.get("fieldsV1") or {})
            if entry["manager"] == "gitops":
                assert entry["operation"] == "Apply"
                continue
            if entry.get("subresource") == "status":
                assert all(p.startswith(".status") for p in paths), (entry["manager"], paths)
                continue
            assert paths, entry
            for path in paths:
                assert path.startswith(".metadata.annotations.wattkeeper.io/") or path.startswith(
                    ".metadata.finalizers"), (plural, entry["manager"], path)
