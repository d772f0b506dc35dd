"""A profile measured by the profiler Job on the simulated GPU cluster, then used by the next plan.

The operator (a process) sees an EnergyProfile with a simulated sweep and creates the profiler Job; the scheduler
places its pod on a KWOK GPU node; the fleet runner runs the pod's command (`wattkeeper-runtime profile`) as a
kubelet would, which starts simulators with the launcher's arguments, drives them and writes status.points; an
LLMService created next is planned from those measured points and its status.plan says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def sim_cluster() -> Any:
    import localcluster

    cluster = localcluster.ensure_cluster(simulated_nodes=True)
    localcluster.apply_crds(ROOT / "crds")
    return cluster


@pytest.fixture
def namespace(sim_cluster: Any) -> Iterator[tuple[Any, str]]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(sim_cluster.kubeconfig))
    core = client.CoreV1Api(api)
    name = f"t-prof-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_service_account(name, {"metadata": {"name": "wattkeeper-profiler"}})
    yield api, name
    core.delete_namespace(name, propagation_policy="Background")


def test_profile_measured_by_the_job_is_used_by_the_next_plan(sim_cluster: Any, namespace: tuple[Any, str],
                                                             tmp_path: Path) -> None:
    from kubernetes import client

    api, ns = namespace
    custom = client.CustomObjectsApi(api)
    kubeconfig = str(sim_cluster.kubeconfig)
    processes = [
        subprocess.Popen([sys.executable, "-m", "wattkeeper_runtime.cli", "fleet", "--kubeconfig", kubeconfig,
                          "--namespace", ns, "--file-sd", str(tmp_path / "sd.json"), "--registry",
                          str(tmp_path / "registry.json"), "--speedup", "10", "--log-dir", str(tmp_path / "logs")],
                         stdout=(tmp_path / "fleet.log").open("wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "wattkeeper.cli", "run", "--kubeconfig", kubeconfig, "--namespace",
                          ns, "--interval-seconds", "3", "--telemetry", "scrape", "--metrics-port", "0",
                          "--health-port", "0"],
                         stdout=(tmp_path / "operator.log").open("wb"), stderr=subprocess.STDOUT),
    ]
    try:
        profile = {
            "apiVersion": "wattkeeper.io/v1alpha1", "kind": "EnergyProfile", "metadata": {"name": "llama"},
            "spec": {"modelName": MODEL, "accelerator": "H100", "sweep": {
                "precisions": ["bf16", "fp8"], "maxNumSeqs": [256], "concurrencies": [2, 8],
                "shapes": [{"inputTokens": 1024, "outputTokens": 256}], "secondsPerPoint": 30,
                "parametersBillions": 8, "simulate": True}},
        }
        custom.create_namespaced_custom_object("wattkeeper.io", "v1alpha1", ns, "energyprofiles", profile)

        def measured() -> dict[str, Any] | None:
            status = custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", ns, "energyprofiles",
                                                         "llama").get("status") or {}
            return status if status.get("phase") in ("Measured", "Failed") else None

        status = wait_for("the profiler Job to measure the sweep", measured, 420, every=1.0)
        jobs = client.BatchV1Api(api).list_namespaced_job(ns).items
        print(json.dumps({k: status.get(k) for k in ("phase", "message", "job", "provenance")}, indent=1))
        for point in status.get("points") or []:
            print(point)
        assert status["phase"] == "Measured", status.get("message")
        assert [j.metadata.name for j in jobs] == ["llama-profile-1"] and status["job"] == "llama-profile-1"
        assert status["provenance"]["energySource"] == "simulated"
        assert status["provenance"]["gpuModel"] and status["provenance"]["driverVersion"]
        assert status["provenance"]["job"] == "llama-profile-1" and status["provenance"]["measuredAt"]
        assert {p["precision"] for p in status["points"]} == {"bf16", "fp8"} and len(status["points"]) == 4
        load_tokens = sorted(p["outputTokensPerSecond"] for p in status["points"])

        # The next plan: a service whose load one replica carries within the measured range.
        rate = load_tokens[len(load_tokens) // 2] / 256 * 0.7
        service = {
            "apiVersion": "wattkeeper.io/v1alpha1", "kind": "LLMService", "metadata": {"name": "llama"},
            "spec": {"model": {"name": MODEL, "parametersBillions": 8},
                     "quality": {"allowedPrecisions": ["bf16", "fp8"]},
                     "slo": {"ttftP95Seconds": 5, "itlP95Seconds": 0.2},
                     "scaling": {"minReplicas": 1, "maxReplicas": 1},
                     "accelerator": {"type": "H100", "maxTensorParallel": 1},
                     "workload": {"requestsPerSecond": round(rate, 3), "inputTokens": 1024, "outputTokens": 256}},
        }
        custom.create_namespaced_custom_object("wattkeeper.io", "v1alpha1", ns, "llmservices", service)

        def planned() -> dict[str, Any] | None:
            obj = custom.get_namespaced_custom_object("wattkeeper.io", "v1alpha1", ns, "llmservices", "llama")
            plan = (obj.get("status") or {}).get("plan") or {}
            return plan if plan.get("reason") else None

        plan = wait_for("the service's first plan", planned, 120, every=1.0)
        print(json.dumps(plan, indent=1))
        assert "Measured profile points cover" in plan["reason"], plan["reason"]
        assert "the chosen plan's figures are measured" in plan["reason"], plan["reason"]
        assert plan["predicted"]["source"] == "profile"

        # The lever in place: the operator (--power-limits) writes the planned limit on the running pod (covered
        # by tests/integration/test_power_limits.py); here it is written by hand, and the simulated node's agent
        # (the fleet runner) applies it to the pod's simulator without restarting it.
        core = client.CoreV1Api(api)
        pod = wait_for("the service's pod", lambda: [
            p for p in core.list_namespaced_pod(ns, label_selector="wattkeeper.io/service=llama").items
            if p.status.phase == "Running"], 60, every=1.0)[0]
        core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"annotations": {
            "wattkeeper.io/gpu-power-limit-watts": "300"}}})
        wait_for("the simulated agent to apply the limit",
                 lambda: f"pod {ns}/{pod.metadata.name}: GPU power limit 300" in (tmp_path / "fleet.log").read_text(),
                 60, every=1.0)
        assert [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="wattkeeper.io/service=llama")
                .items] == [pod.metadata.name]  # nothing restarted
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in ("fleet.log", "operator.log"):
            print(f"--- {log} (tail)\n" + "\n".join((tmp_path / log).read_text().splitlines()[-15:]))
