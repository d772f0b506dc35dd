"""The vLLM container's probes and preStop drain, and how the fleet runner (standing in for the kubelet) reads them."""

from __future__ import annotations

from typing import Any

from wattkeeper.api import LLMService, ServingConfigSpec
from wattkeeper.render.objects import DRAIN_MARGIN_SECONDS, TERMINATION_GRACE_SECONDS, render_deployment
from wattkeeper_runtime.podargs import prestop_drain_args, target_of


def service() -> LLMService:
    return LLMService.model_validate(
        {
            "apiVersion": "wattkeeper.io/v1alpha1",
            "kind": "LLMService",
            "metadata": {"name": "chat", "namespace": "team-a", "uid": "u1"},
            "spec": {
                "model": {"name": "chat", "source": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
                "slo": {"ttftP95Seconds": 1.0, "itlP95Seconds": 0.05},
                "engine": {"port": 8001},
            },
        }
    )


def rendered_pod() -> dict[str, Any]:
    deployment = render_deployment(service(), ServingConfigSpec(precision="bf16", replicas=1).to_plan())
    template = deployment["spec"]["template"]
    return {
        "metadata": {**template["metadata"], "name": "chat-abc", "namespace": "team-a", "uid": "p1"},
        "spec": {**template["spec"], "nodeName": "gpu-1"},
        "status": {"phase": "Running"},
    }


def test_probes_on_vllm_health() -> None:
    container = rendered_pod()["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    # Liveness only after startup (the kubelet holds it until the startup probe passes) and slow to fire.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    assert liveness["timeoutSeconds"] >= 5


def test_prestop_drains_within_the_grace_period() -> None:
    pod = rendered_pod()
    assert pod["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS
    command = pod["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"] and "import wattkeeper" not in command[2]
    args = prestop_drain_args(pod["spec"]["containers"][0])
    assert args == ("--port", "8001", "--timeout", f"{TERMINATION_GRACE_SECONDS - DRAIN_MARGIN_SECONDS:g}")


def test_fleet_reads_grace_and_drain_from_the_pod() -> None:
    target = target_of(rendered_pod())
    assert target is not None
    assert target.grace_seconds == TERMINATION_GRACE_SECONDS
    assert target.drain_args is not None and "--timeout" in target.drain_args


def test_drain_as_the_runtime_command_is_recognised() -> None:
    container = {"lifecycle": {"preStop": {"exec": {"command": ["wattkeeper-runtime", "drain", "--timeout", "50"]}}}}
    assert prestop_drain_args(container) == ("--timeout", "50")
    assert prestop_drain_args({"lifecycle": {"preStop": {"exec": {"command": ["sleep", "10"]}}}}) is None
    assert prestop_drain_args({}) is None
