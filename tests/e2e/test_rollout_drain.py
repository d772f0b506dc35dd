"""A reconfiguration under load loses no request: the operator's Deployment rolls (new max-num-seqs) while the load
generator replays a trace against its pods, on the simulated GPU cluster.

The fleet runner stands in for the kubelet: a deleted pod leaves the load generator's registry (a terminating pod is
not a ready endpoint), its preStop drain runs against the simulator, then SIGTERM, which cancels whatever is still in
flight, as vLLM 0.11.1 does. The control case renders the same Deployment without the preStop hook: there SIGTERM
cuts requests, so the drain is what saves them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

SPEEDUP = 4.0  # simulators and load generator alike: a ~5 s generation takes ~1.2 s of wall time
LOAD_SECONDS = 40.0
ROLL_AFTER_SECONDS = 10.0


@pytest.fixture(scope="module")
def sim_cluster() -> Any:
    import localcluster

    return localcluster.ensure_cluster(simulated_nodes=True)


@pytest.fixture
def namespace(sim_cluster: Any) -> Iterator[tuple[Any, str]]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(sim_cluster.kubeconfig))
    name = f"t-roll-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield api, name
    client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")


def deployment(namespace: str, max_num_seqs: int, drain: bool) -> dict[str, Any]:
    from wattkeeper.api import LLMService, ServingConfigSpec
    from wattkeeper.render.objects import render_deployment

    service = LLMService.model_validate({
        "apiVersion": "wattkeeper.io/v1alpha1", "kind": "LLMService",
        "metadata": {"name": "chat", "namespace": namespace, "uid": "u"},
        "spec": {"model": {"name": "chat", "source": "meta-llama/Llama-3.1-8B-Instruct", "parametersBillions": 8},
                 "slo": {"ttftP95Seconds": 1.0, "itlP95Seconds": 0.05}},
    })  # fmt: skip
    plan = ServingConfigSpec(precision="bf16", replicas=2, max_num_seqs=max_num_seqs).to_plan()
    body = render_deployment(service, plan)
    body["metadata"].pop("ownerReferences")  # no LLMService object here: the test plays the operator's part
    # KWOK reports a pod Ready the moment it runs, before its simulator listens; a real vLLM pod is Ready only when
    # /health answers. minReadySeconds gives the simulator that time, so the roll waits for it as it would for vLLM.
    body["spec"]["minReadySeconds"] = 6
    if not drain:
        del body["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
    return body


def apply(sim_cluster: Any, body: dict[str, Any]) -> None:
    import localcluster

    localcluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=test", "-f", "-",
                         input_text=json.dumps(body))  # fmt: skip


@pytest.mark.parametrize("drain", [True, False], ids=["with-prestop-drain", "control-without-drain"])
def test_reconfiguration_under_load_completes_every_request(
    sim_cluster: Any, namespace: tuple[Any, str], tmp_path: Path, drain: bool
) -> None:
    from kubernetes import client

    api, ns = namespace
    registry, file_sd, logs = tmp_path / "registry.json", tmp_path / "sd.json", tmp_path / "logs"
    env = {**os.environ, "KUBECONFIG": str(sim_cluster.kubeconfig)}
    fleet = subprocess.Popen(
        [sys.executable, "-m", "wattkeeper_runtime.cli", "fleet", "--kubeconfig", str(sim_cluster.kubeconfig),
         "--namespace", ns, "--file-sd", str(file_sd), "--registry", str(registry), "--speedup", f"{SPEEDUP:g}",
         "--log-dir", str(logs)],
        stdout=open(tmp_path / "fleet.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,  # noqa: SIM115
    )  # fmt: skip
    loadgen: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        apply(sim_cluster, deployment(ns, 64, drain))

        def endpoints() -> list[dict[str, str]]:
            try:
                return list(json.loads(registry.read_text()).get("services", {}).get("chat", []))
            except (OSError, ValueError):
                return []

        first = wait_for("two simulators", lambda: len(endpoints()) == 2 and endpoints(), 120)
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "wattkeeper_runtime.cli", "loadgen", "--registry", str(registry), "--service",
             f"{ns}/chat", "--synthetic", "--speedup", f"{SPEEDUP:g}", "--rate-scale", "0.6", "--duration",
             f"{LOAD_SECONDS:g}", "--no-stream"],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "loadgen.log", "wb"), env=env,  # noqa: SIM115
        )  # fmt: skip
        time.sleep(ROLL_AFTER_SECONDS)
        rolled_at = time.monotonic()
        apply(sim_cluster, deployment(ns, 128, drain))  # the reconfiguration: a new pod template, a rolling update

        apps = client.AppsV1Api(api)

        def rolled() -> bool:
            status = apps.read_namespaced_deployment(name="chat", namespace=ns).status
            current = {e["pod"] for e in endpoints()}
            return bool(status.updated_replicas == 2 and status.replicas == 2 and len(current) == 2
                        and not current & {e["pod"] for e in first})  # fmt: skip

        wait_for("the rollout to finish", rolled, 120)
        roll_seconds = time.monotonic() - rolled_at
        out, _ = loadgen.communicate(timeout=LOAD_SECONDS + 120)
        summary = json.loads(out)
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
        os.killpg(fleet.pid, signal.SIGTERM)
        fleet.wait(timeout=30)

    sim_logs = "\n".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    cancelled = sim_logs.count("request(s) in flight: cancelled")
    old_urls = {e["url"] for e in first}
    served_by_old = sum(n for url, n in summary["per_endpoint"].items() if url in old_urls)
    report = {"drain": drain, "sent": summary["sent"], "ok": summary["ok"], "failed": summary["errors"],
              "served_by_old_pods": served_by_old, "roll_seconds": round(roll_seconds, 1),
              "sims_cancelling_on_sigterm": cancelled, "first_errors": summary["first_errors"],
              "test_seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    print(json.dumps(report, indent=2))
    assert summary["sent"] >= 50, report
    if drain:
        assert summary["errors"] == 0 and summary["ok"] == summary["sent"], report
        assert cancelled == 0, report  # every old simulator was idle when SIGTERM came
    else:
        # The same roll without the drain: SIGTERM lands on requests in flight, which vLLM (the simulator) cancels,
        # and on requests sent before the endpoint change reached the client (connection refused).
        assert summary["errors"] > 0, report
