"""Argo CD health checks (deploy/argocd/health-*.lua) run by a real Lua 5.4 against sample objects.

Argo CD runs a health script with the live object in the global `obj` and reads the table it returns; the harness
below does the same: it turns a Python dict into a Lua table literal, runs the script as a function body and
prints `status<TAB>message`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
LUA = shutil.which("lua5.4") or ("/usr/bin/lua5.4" if Path("/usr/bin/lua5.4").exists() else None)
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

needs_lua = pytest.mark.skipif(LUA is None, reason="lua5.4 not installed (hack/install-debs.sh installs it)")


def lua_literal(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    program = (f"obj = {lua_literal(obj)}\n"
               f"local function check()\n{(ARGOCD / script).read_text()}\nend\n"
               "local hs = check()\n"
               "io.write(hs.status, '\\t', hs.message or '')\n")
    result = subprocess.run([str(LUA), "-"], input=program, text=True, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr
    status, _, message = result.stdout.partition("\t")
    assert status in ARGO_STATUSES
    return status, message


def cond(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T00:00:00Z"}


def service(conditions: list[dict[str, str]] | None, generation: int = 1, observed: int | None = 1,
            plan: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "wattkeeper.io/v1alpha1", "kind": "LLMService",
                           "metadata": {"name": "llama-8b", "generation": generation}, "spec": {}}
    if conditions is not None:
        obj["status"] = {"conditions": conditions, "observedGeneration": observed}
        if plan:
            obj["status"]["plan"] = plan
    return obj


PLAN = {"precision": "fp8", "tensorParallel": 1, "replicas": 2}
SERVICE_CASES = [
    ("new-no-status", service(None), "Progressing", "Waiting for the operator"),
    ("stale-generation", service([cond("Ready", "True")], generation=3, observed=2), "Progressing", "generation 3"),
    ("ready", service([cond("Ready", "True"), cond("Progressing", "False"), cond("Degraded", "False", "AsPlanned")],
                      plan=PLAN), "Healthy", "fp8, TP 1, 2 replicas"),
    ("rolling-out", service([cond("Ready", "False", "ReplicasNotReady"), cond("Progressing", "True", "RollingOut",
                                                                              "1 of 2 updated"),
                             cond("Degraded", "False")]), "Progressing", "RollingOut: 1 of 2 updated"),
    ("invalid-spec", service([cond("Degraded", "True", "InvalidSpec", "spec does not validate")]), "Degraded",
     "InvalidSpec: spec does not validate"),
    ("no-feasible-plan", service([cond("Ready", "False"), cond("Degraded", "True", "NoFeasibleConfiguration",
                                                               "no configuration meets the SLOs")]),
     "Degraded", "NoFeasibleConfiguration"),
    ("replicas-not-ready", service([cond("Ready", "False", "ReplicasNotReady", "0 of 1 ready"),
                                    cond("Progressing", "False")]), "Progressing", "ReplicasNotReady: 0 of 1 ready"),
]


@needs_lua
@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in SERVICE_CASES],
                         ids=[c[0] for c in SERVICE_CASES])
def test_llmservice_health(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = health("health-llmservice.lua", obj)
    assert got_status == status
    assert message in got_message


def budget(conditions: list[dict[str, str]] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": "EnergyBudget", "metadata": {"name": "chat-team", "generation": 2}, "spec": {}}
    if conditions is not None:
        obj["status"] = {"conditions": conditions, "observedGeneration": 2}
    return obj


BUDGET_CASES = [
    ("new-no-status", budget(None), "Progressing", "Waiting"),
    ("within", budget([cond("Ready", "True", "Allocated", "2 services allocated"),
                       cond("WithinBudget", "True", "WithinLimit", "window average 2100 W against 3000 W"),
                       cond("TelemetryAvailable", "True")]), "Healthy", "2 services allocated; window average 2100 W"),
    ("degrading-on-purpose", budget([cond("Ready", "True", "Degraded", "degraded (lowest priority first): batch"),
                                     cond("WithinBudget", "True"), cond("TelemetryAvailable", "True")]),
     "Healthy", "lowest priority first"),
    ("nothing-measured-yet", budget([cond("Ready", "True"), cond("WithinBudget", "Unknown", "NoMeasurement"),
                                     cond("TelemetryAvailable", "True")]), "Healthy", ""),
    ("over-limit", budget([cond("Ready", "True"), cond("WithinBudget", "False", "OverLimit", "3400 W against 3000 W"),
                           cond("TelemetryAvailable", "True")]), "Degraded", "OverLimit: 3400 W against 3000 W"),
    ("no-telemetry", budget([cond("Ready", "True"), cond("WithinBudget", "Unknown"),
                             cond("TelemetryAvailable", "False", "TelemetryUnavailable", "llama-8b: no GPU power")]),
     "Degraded", "TelemetryUnavailable"),
    ("invalid-spec", budget([cond("Ready", "False", "InvalidSpec", "spec does not validate")]), "Degraded",
     "InvalidSpec"),
]


@needs_lua
@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in BUDGET_CASES], ids=[c[0] for c in BUDGET_CASES])
def test_energybudget_health(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = health("health-energybudget.lua", obj)
    assert got_status == status
    assert message in got_message


@needs_lua
def test_energyprofile_health() -> None:
    example = yaml.safe_load((ROOT / "examples" / "energyprofile.yaml").read_text())
    status, message = health("health-energyprofile.lua", example)
    assert status == "Healthy"
    assert message == f"{len(example['spec']['points'])} measured points"
    assert health("health-energyprofile.lua", {"spec": {"points": []}})[0] == "Degraded"
    rejected = {**example, "status": {"conditions": [cond("Ready", "False", "Rejected", "bad points")]}}
    assert health("health-energyprofile.lua", rejected) == ("Degraded", "Rejected: bad points")


@needs_lua
def test_health_checks_survive_odd_objects() -> None:
    """Whatever a user or an older operator left, the scripts answer instead of raising."""
    odd = [{}, {"metadata": {}}, {"status": {}}, {"status": {"conditions": []}},
           {"status": {"conditions": [{"type": "Ready"}]}}, {"metadata": {"generation": 1}, "status": {
               "conditions": [cond("Ready", "True")]}}]
    for script in ("health-llmservice.lua", "health-energybudget.lua", "health-energyprofile.lua"):
        for obj in odd:
            health(script, obj)


def test_argocd_cm_patch_embeds_the_scripts_verbatim() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    expected = {"LLMService": "health-llmservice.lua", "EnergyBudget": "health-energybudget.lua",
                "EnergyProfile": "health-energyprofile.lua"}
    assert set(patch["data"]) == {f"resource.customizations.health.wattkeeper.io_{k}" for k in expected}
    for kind, name in expected.items():
        assert patch["data"][f"resource.customizations.health.wattkeeper.io_{kind}"] == (ARGOCD / name).read_text(), (
            "stale: run python3 deploy/render.py")
