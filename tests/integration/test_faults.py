"""Faults against the real control plane (KWOK nodes, so pods run) and a real Prometheus: kill -9 the operator
during rollouts, restart kube-apiserver and etcd under load, stop Prometheus, kill the active peer, scale a
Deployment by hand. Bounded in time, loopback only."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from wattkeeper.controller.decide import running_plan
from wattkeeper.controller.runner import OperatorThread, build_dependencies
from wattkeeper.controller.settings import OperatorSettings

from tests.support import wait
from tests.support.fake_exporter import FakeFleetExporter, ServiceLoad
from tests.support.operator_process import OperatorProcess, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "wattkeeper.io", "v1alpha1"
INTERVAL_S = 2.0
# The shared helper, set for this file: any error (the apiserver may be restarting) and any string (what
# `converged` says is missing) mean "not yet".
wait_for = functools.partial(wait.wait_for, timeout=45.0, every=0.25, retry_on=(Exception,), not_yet=(str,))


@pytest.fixture(scope="module")
def sim_cluster():  # type: ignore[no-untyped-def]
    import localcluster

    cluster = localcluster.ensure_cluster(simulated_nodes=True)
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    return cluster


@pytest.fixture(scope="module")
def exporter(sim_cluster, api_client) -> Iterator[FakeFleetExporter]:  # type: ignore[no-untyped-def]
    with FakeFleetExporter(api_client) as fake:
        yield fake


def start_prometheus(folder: Path, port: int, exporter: FakeFleetExporter):  # type: ignore[no-untyped-def]
    import prometheus as prom

    return prom.start(folder, port, [{"job_name": "fake-gpus", "honor_labels": True,
                                      "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}])


@pytest.fixture(scope="module")
def prometheus(exporter, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = start_prometheus(tmp_path_factory.mktemp("prometheus"), free_port(), exporter)
    yield server.url
    server.stop()


def service_body(name: str, rps: float = 2.0, **spec: Any) -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())
    obj["metadata"]["name"] = name
    obj["spec"]["workload"]["requestsPerSecond"] = rps
    obj["spec"].update(copy.deepcopy(spec))
    return obj


def custom(api_client) -> client.CustomObjectsApi:  # type: ignore[no-untyped-def]
    return client.CustomObjectsApi(api_client)


def get(api_client, namespace: str, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices", name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def converged(api_client, namespace: str) -> bool | str:  # type: ignore[no-untyped-def]
    """Every service: its spec read, its Deployment runs exactly the planned configuration, all replicas ready.
    True, or what is not yet (a string, which `wait_for` reports)."""
    apps = client.AppsV1Api(api_client)
    services = custom(api_client).list_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices")["items"]
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(namespace).items}
    for svc in services:
        name = svc["metadata"]["name"]
        status = svc.get("status") or {}
        plan = status.get("plan") or {}
        if status.get("observedGeneration") != svc["metadata"]["generation"] or not plan:
            return f"{name}: generation {svc['metadata']['generation']} not observed ({status.get('observedGeneration')})"
        dep = deployments.get(name)
        if dep is None:
            return f"{name}: no Deployment"
        running = running_plan(status)
        want = running.config.short() if running is not None else None
        have = (dep.metadata.annotations or {}).get("wattkeeper.io/config")
        if have != want or dep.spec.replicas != plan["replicas"]:
            return f"{name}: Deployment runs {have} x{dep.spec.replicas}, plan {want} x{plan['replicas']}"
        if dep.status.ready_replicas != dep.spec.replicas or dep.status.updated_replicas != dep.spec.replicas:
            return (f"{name}: {dep.status.ready_replicas} ready, {dep.status.updated_replicas} updated of "
                    f"{dep.spec.replicas}")
    return bool(services) or "no services"


def orphans_and_duplicates(api_client, namespace: str) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Deployments without a service, and services with more than one Deployment or more pods than planned."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    services = {s["metadata"]["name"]: s for s in
                custom(api_client).list_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices")["items"]}
    deployments = apps.list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/managed-by=wattkeeper").items
    orphans = [d.metadata.name for d in deployments if d.metadata.labels.get("wattkeeper.io/service") not in services]
    duplicates = []
    for name, svc in services.items():
        mine = [d for d in deployments if d.metadata.labels.get("wattkeeper.io/service") == name]
        pods = [p for p in core.list_namespaced_pod(namespace, label_selector=f"wattkeeper.io/service={name}").items
                if p.metadata.deletion_timestamp is None]
        planned = ((svc.get("status") or {}).get("plan") or {}).get("replicas", 0)
        if len(mine) > 1 or len(pods) > planned:
            duplicates.append(f"{name}: {len(mine)} Deployments, {len(pods)} pods for {planned} planned")
    return orphans, duplicates


def test_kill_9_during_rollouts_leaves_no_orphans_and_converges(sim_cluster, api_client, prometheus, namespace,  # type: ignore[no-untyped-def]
                                                                 tmp_path) -> None:
    rng = random.Random(14)
    names = [f"svc-{i}" for i in range(6)]
    op = OperatorProcess(sim_cluster.kubeconfig, namespace, prometheus, tmp_path / "operator.log",
                         interval_seconds=INTERVAL_S).start()
    try:
        op.wait_up()
        for name in names:
            custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices",
                                                               service_body(name, rps=rng.uniform(1, 8)))
        convergence: list[float] = []
        for _ in range(4):
            time.sleep(rng.uniform(0.2, 3.0))  # somewhere in a rollout: planning, applying, pods starting
            op.kill9()
            # Spec changes while it is down: the restarted operator must roll them out, once.
            for name in rng.sample(names, 2):
                custom(api_client).patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, "llmservices", name,
                    {"spec": {"workload": {"requestsPerSecond": round(rng.uniform(1, 20), 1)}}})
            op.start()
            started = time.monotonic()
            wait_for("convergence after the restart", lambda: converged(api_client, namespace), timeout=60)
            convergence.append(time.monotonic() - started)
        orphans, duplicates = wait_for(
            "no extra pods", lambda: (r := orphans_and_duplicates(api_client, namespace)) and not r[1] and r,
            timeout=60)
        print(f"kill -9 x4: converged {', '.join(f'{s:.1f}' for s in convergence)} s after each restart; "
              f"orphans {len(orphans)}, duplicates {len(duplicates)}")
        assert orphans == [] and duplicates == []
        assert max(convergence) <= 30, convergence
    finally:
        op.stop()


@pytest.fixture
def operator(sim_cluster, api_client, prometheus, namespace) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    settings = OperatorSettings(interval_seconds=INTERVAL_S, namespaces=[namespace], prometheus_url=prometheus,
                                telemetry_window_seconds=5, metrics_port=0, health_port=0)
    deps = build_dependencies(settings, api_client)
    with OperatorThread(deps):
        yield deps


def tick_reconciles(deps: Any) -> float:
    return float(deps.metrics.reconciles.labels("LLMService", "tick")._value.get())


def test_the_loop_acts_within_10s_of_an_apiserver_and_etcd_restart(sim_cluster, api_client, operator,  # type: ignore[no-untyped-def]
                                                                  namespace) -> None:
    import localcluster

    for i in range(10):
        custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices",
                                                           service_body(f"load-{i}", rps=1 + i))
    wait_for("convergence", lambda: converged(api_client, namespace), timeout=90)
    for component in ("kube-apiserver", "etcd"):  # kill -9 both, mid-pass as it happens
        pid = int((localcluster.STATE / f"{component}.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        # Reap it when this process started the cluster, or it lingers as a zombie that looks alive.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    time.sleep(3 * INTERVAL_S)  # passes fail meanwhile: connection refused
    localcluster.up_control_plane()  # returns once /readyz answers
    back = time.monotonic()
    before = tick_reconciles(operator)
    wait_for("a full pass after the restart", lambda: tick_reconciles(operator) >= before + 10, timeout=30)
    acted_s = time.monotonic() - back
    # and it acts: a Deployment scaled by hand meanwhile goes back
    client.AppsV1Api(api_client).patch_namespaced_deployment_scale("load-0", namespace, {"spec": {"replicas": 5}})
    planned = get(api_client, namespace, "load-0")["status"]["plan"]["replicas"]
    wait_for("the drift undone", lambda: client.AppsV1Api(api_client).read_namespaced_deployment(
        "load-0", namespace).spec.replicas == planned, timeout=30)
    print(f"apiserver + etcd restart: the loop finished a full pass {acted_s:.1f}s after the apiserver was back")
    assert operator.liveness() is None
    assert acted_s <= 10


def test_prometheus_stopped_holds_and_resumes(sim_cluster, api_client, exporter, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = start_prometheus(tmp_path / "prom", port, exporter)
    settings = OperatorSettings(interval_seconds=INTERVAL_S, namespaces=[namespace], prometheus_url=server.url,
                                telemetry_window_seconds=5, metrics_port=0, health_port=0)
    deps = build_dependencies(settings, api_client)
    try:
        with OperatorThread(deps):
            custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices",
                                                               service_body("quiet", rps=12))
            wait_for("ready", lambda: converged(api_client, namespace), timeout=60)
            exporter.set(namespace, "quiet", ServiceLoad(watts_per_pod=500, tokens_per_second=3000,
                                                         requests_per_second=12, running=30))
            wait_for("telemetry", lambda: (c := condition(get(api_client, namespace, "quiet"), "TelemetryAvailable"))
                     and c["status"] == "True", timeout=60)
            replicas = client.AppsV1Api(api_client).read_namespaced_deployment("quiet", namespace).spec.replicas
            server.stop()
            wait_for("TelemetryAvailable=False", lambda: (c := condition(get(api_client, namespace, "quiet"),
                                                                         "TelemetryAvailable")) and c["status"] == "False",
                     timeout=30)
            time.sleep(4 * INTERVAL_S)  # several passes in silence
            after = client.AppsV1Api(api_client).read_namespaced_deployment("quiet", namespace).spec.replicas
            assert after >= replicas, "scaled down because of silence"
            server = start_prometheus(tmp_path / "prom", port, exporter)
            wait_for("TelemetryAvailable=True again", lambda: (c := condition(get(api_client, namespace, "quiet"),
                                                                              "TelemetryAvailable"))
                     and c["status"] == "True", timeout=60)
    finally:
        server.stop()


def test_a_deployment_changed_by_hand_returns_to_the_plan(sim_cluster, api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    # No telemetry at all (nothing listens there): holding the plan still means re-applying it.
    settings = OperatorSettings(interval_seconds=30, namespaces=[namespace],
                                prometheus_url=f"http://127.0.0.1:{free_port()}", metrics_port=0, health_port=0)
    deps = build_dependencies(settings, api_client)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    with OperatorThread(deps):
        custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices",
                                                           service_body("byhand", rps=1))
        wait_for("ready", lambda: converged(api_client, namespace), timeout=60)
        planned = get(api_client, namespace, "byhand")["status"]["plan"]["replicas"]
        apps.patch_namespaced_deployment_scale("byhand", namespace, {"spec": {"replicas": planned + 3}})
        started = time.monotonic()
        wait_for("replicas back", lambda: apps.read_namespaced_deployment("byhand", namespace).spec.replicas == planned,
                 timeout=20)
        scaled_s = time.monotonic() - started
        uid = core.read_namespaced_service("byhand", namespace).metadata.uid
        core.delete_namespaced_service("byhand", namespace)
        started = time.monotonic()
        wait_for("the Service back", lambda: core.read_namespaced_service("byhand", namespace).metadata.uid != uid,
                 timeout=20)
        service_s = time.monotonic() - started
        uid = apps.read_namespaced_deployment("byhand", namespace).metadata.uid
        apps.delete_namespaced_deployment("byhand", namespace)
        started = time.monotonic()
        wait_for("the Deployment back", lambda: (d := apps.read_namespaced_deployment("byhand", namespace))
                 and d.metadata.uid != uid and d.metadata.deletion_timestamp is None and d, timeout=20)
        deployment_s = time.monotonic() - started
    print(f"drift repaired without telemetry (30 s interval): scaled by hand {scaled_s:.1f}s, Service deleted "
          f"{service_s:.1f}s, Deployment deleted {deployment_s:.1f}s")
    assert scaled_s <= 10 and service_s <= 10 and deployment_s <= 10


def test_the_standby_takes_over_within_15s_of_the_active_dying(sim_cluster, api_client, prometheus, namespace,  # type: ignore[no-untyped-def]
                                                                kubectl, tmp_path) -> None:
    kubectl("apply", "--server-side", "-f", str(ROOT / "charts" / "wattkeeper" / "crds" / "kopf.dev_peerings.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    custom(api_client).create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings",
                                                       {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                                        "metadata": {"name": "wattkeeper"}})
    ops = [OperatorProcess(sim_cluster.kubeconfig, namespace, prometheus, tmp_path / f"operator-{i}.log",
                           interval_seconds=INTERVAL_S, peering="wattkeeper").start() for i in range(2)]
    apps = client.AppsV1Api(api_client)
    try:
        for op in ops:
            op.wait_up()
        custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices",
                                                           service_body("ha", rps=1))
        wait_for("ready", lambda: converged(api_client, namespace), timeout=60)
        ticks = [op.counter("wattkeeper_reconciles_total", kind="LLMService", trigger="tick") for op in ops]
        time.sleep(3 * INTERVAL_S)
        active = wait_for("one active replica", lambda: [i for i, op in enumerate(ops) if op.counter(
            "wattkeeper_reconciles_total", kind="LLMService", trigger="tick") > ticks[i]], timeout=20)
        assert len(active) == 1, active
        planned = get(api_client, namespace, "ha")["status"]["plan"]["replicas"]
        ops[active[0]].kill9()
        killed = time.monotonic()
        apps.patch_namespaced_deployment_scale("ha", namespace, {"spec": {"replicas": planned + 2}})
        wait_for("the standby undoing the drift", lambda: apps.read_namespaced_deployment("ha", namespace)
                 .spec.replicas == planned, timeout=30, every=0.2)
        failover_s = time.monotonic() - killed
        print(f"failover: the standby acted {failover_s:.1f}s after the active replica was killed")
        assert failover_s <= 15
    finally:
        for op in ops:
            op.stop()
