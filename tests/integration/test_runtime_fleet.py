"""The fleet runner on the simulated GPU cluster: a scheduled (KWOK-Running) vLLM pod gets a simulator with the
pod's own arguments, listed in the file_sd and registry files; deleting the pod stops it; SIGTERM leaves no child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sim_cluster() -> Any:
    import localcluster

    return localcluster.ensure_cluster(simulated_nodes=True)


@pytest.fixture
def core(sim_cluster: Any) -> Iterator[tuple[Any, str]]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(sim_cluster.kubeconfig))
    core = client.CoreV1Api(api)
    name = f"t-fleet-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield core, name
    core.delete_namespace(name, propagation_policy="Background")


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_fleet_simulates_running_pods(sim_cluster: Any, core: tuple[Any, str], tmp_path: Path) -> None:
    api, namespace = core
    sd_path, registry_path = tmp_path / "sd.json", tmp_path / "registry.json"
    fleet = subprocess.Popen(
        [sys.executable, "-m", "wattkeeper_runtime.cli", "fleet", "--kubeconfig", str(sim_cluster.kubeconfig),
         "--namespace", namespace, "--file-sd", str(sd_path), "--registry", str(registry_path), "--speedup", "20",
         "--log-dir", str(tmp_path / "logs")],
    )  # fmt: skip
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "llama-0",
                "labels": {"app.kubernetes.io/managed-by": "wattkeeper", "wattkeeper.io/service": "llama"},
            },
            "spec": {
                "containers": [
                    {
                        "name": "vllm",
                        "image": "vllm/vllm-openai:v0.11.1",
                        "command": ["vllm", "serve"],
                        "args": [
                            "meta-llama/Llama-3.1-8B-Instruct",
                            "--served-model-name",
                            "llama",
                            "--max-num-seqs",
                            "32",
                            "--tensor-parallel-size",
                            "2",
                            "--port",
                            "8000",
                        ],
                        "resources": {"limits": {"nvidia.com/gpu": "2"}},
                    }
                ],
                "tolerations": [{"operator": "Exists"}],
            },
        }
        api.create_namespaced_pod(namespace, pod)

        def registered() -> list[dict[str, str]]:
            if not registry_path.exists():
                return []
            return list(json.loads(registry_path.read_text()).get("services", {}).get("llama", []))

        entries = wait_for("the simulator to become ready", registered, 90, every=0.3)
        assert entries[0]["pod"] == "llama-0" and entries[0]["model"] == "llama"
        sd = json.loads(sd_path.read_text())
        assert sd[0]["labels"] == {"namespace": namespace, "pod": "llama-0", "service": "llama"}
        url = entries[0]["url"]
        response = httpx.post(f"{url}/v1/completions", json={"model": "llama", "prompt": "hi", "max_tokens": 4})
        assert response.status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert 'vllm:generation_tokens_total{engine="0",model_name="llama"} 4.0' in metrics
        power = [line for line in metrics.splitlines() if line.startswith("DCGM_FI_DEV_POWER_USAGE{")]
        assert len(power) == 2 and f'namespace="{namespace}"' in power[0] and 'pod="llama-0"' in power[0]
        assert len(children_of(fleet.pid)) == 1

        api.delete_namespaced_pod("llama-0", namespace, grace_period_seconds=0)
        wait_for("the simulator to stop", lambda: not registered() and not children_of(fleet.pid), 60, every=0.3)
    finally:
        child_pids = children_of(fleet.pid)
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=20)
    for pid in child_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert json.loads(sd_path.read_text()) == []
