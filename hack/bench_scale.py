#!/usr/bin/env python3
"""Scale benchmark: N LLMServices against the real local apiserver, the operator as a real process.

Measures: time for N services to converge (every one planned, its Deployment rendered with the plan), a budget
change reaching the Deployments of the services it selects, API writes per idle control-loop pass, writes after a
restart with nothing changed, and the operator's RSS. No pods run (no scheduler, no telemetry): this is the
control plane's and the operator's cost, not the GPUs'.

    make bench-scale                                   # 1,000 services, 100 under a budget
    python hack/bench_scale.py --services 100 --budgeted 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "hack"))

GROUP, VERSION = "wattkeeper.io", "v1alpha1"


def _service(name: str, budgeted: bool, rps: float) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())
    obj["metadata"] = {"name": name, "labels": {"tier": "budgeted" if budgeted else "free"}}
    obj["spec"]["workload"]["requestsPerSecond"] = rps
    obj["spec"]["fallback"] = "ProtectBudget"
    return obj


def _budget(limit_watts: float) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EnergyBudget", "metadata": {"name": "scale"},
            "spec": {"selector": {"matchLabels": {"tier": "budgeted"}}, "enforcement": "Enforce",
                     "power": {"limitWatts": limit_watts, "window": "60s"}}}


class Fleet:
    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace

    def services(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "llmservices")["items"])

    def deployments(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The namespace's Deployments (of the services `names` only, unless None) as raw JSON: the benchmark
        polls them every 0.2 s on the operator's two cores, and decoding 1,000 into client models took a core."""
        from wattkeeper.render import LABEL_SERVICE

        selector = f"{LABEL_SERVICE} in ({','.join(names)})" if names else None
        response: Any = self.apps.list_namespaced_deployment(self.namespace, label_selector=selector,
                                                             _preload_content=False)
        return {d["metadata"]["name"]: d for d in json.loads(response.data)["items"]}

    def unconverged(self) -> list[str]:
        """Services whose spec is not yet read or whose Deployment does not carry their plan."""
        from wattkeeper.controller.decide import running_plan

        deployments = self.deployments()
        out = []
        for svc in self.services():
            name, status = svc["metadata"]["name"], svc.get("status") or {}
            plan = running_plan(status) if status.get("plan") else None
            dep = deployments.get(name)
            if plan is None or status.get("observedGeneration") != svc["metadata"]["generation"] or dep is None \
                    or dep["spec"].get("replicas") != plan.replicas \
                    or _annotations(dep).get("wattkeeper.io/config") != plan.config.short():
                out.append(name)
        return out

    def unsettled(self) -> list[str]:
        """Services whose Deployment status (kube-controller-manager's work) has not yet reached their status: a
        real change that the operator writes in a later pass, so idle passes are counted only after it."""
        deployments = self.deployments()
        return [svc["metadata"]["name"] for svc in self.services()
                if (dep := deployments.get(svc["metadata"]["name"])) is None or not _settled(dep)
                or (svc.get("status") or {}).get("replicas") != (dep.get("status") or {}).get("replicas", 0)
                or int((svc.get("status") or {}).get("readyReplicas") or 0)
                != (dep.get("status") or {}).get("readyReplicas", 0)]


def _annotations(dep: dict[str, Any]) -> dict[str, str]:
    return dict(dep["metadata"].get("annotations") or {})


def _settled(dep: dict[str, Any]) -> bool:
    """kube-controller-manager has seen the Deployment's spec and created its replicas."""
    st, replicas = dep.get("status"), dep["spec"].get("replicas")
    # Every replica created *and* updated: on a busy controller-manager (a full test run, other namespaces being
    # deleted) updatedReplicas trails replicas, and each step of it is a status change the operator reports.
    return bool(st is not None and st.get("observedGeneration") == dep["metadata"].get("generation")
                and st.get("replicas", 0) == replicas and st.get("updatedReplicas", 0) == replicas)


def _floors_watts(services: list[dict[str, Any]]) -> float:
    """The sum of the services' floors, as the operator's budget decision computes them."""
    from wattkeeper.control.budget import service_demand
    from wattkeeper.controller.budgets import service_loads
    from wattkeeper.energy.model import EnergyModel

    model = EnergyModel.default()
    return sum(service_demand(load, model).floor_watts for load in service_loads(services))


def _wait(what: str, check: Any, timeout: float, every: float = 0.5) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(every)
    raise RuntimeError(f"{what}: not within {timeout:.0f}s")


def run(services: int, budgeted: int, interval_seconds: float, workers: int, out: Path | None) -> dict[str, Any]:
    import localcluster
    from kubernetes import client, config

    from tests.support.operator_process import OperatorProcess, free_port

    cluster = localcluster.ensure_cluster()
    localcluster.apply_crds(ROOT / "crds")
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    api_client.configuration.connection_pool_maxsize = workers * 2
    namespace = f"scale-{int(time.time())}"
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    fleet = Fleet(api_client, namespace)
    logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    op = OperatorProcess(cluster.kubeconfig, namespace, f"http://127.0.0.1:{free_port()}", logs / "operator.log",
                         interval_seconds=interval_seconds,
                         extra_env={"WATTKEEPER_RECONCILE_WORKERS": str(workers)})
    figures: dict[str, Any] = {"services": services, "budgeted": budgeted, "interval_seconds": interval_seconds,
                               "reconcile_workers": workers}
    ok = False
    try:
        op.start()
        op.wait_up()
        fleet.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "energybudgets",
                                                     _budget(budgeted * 5000.0))
        started = time.monotonic()
        cpu_before = op.cpu_seconds()
        # Budgeted services carry enough load for several replicas, so that a cut has something to take away.
        # (12-21 requests/s: two or three replicas; past ~25 the planner's smallest-fleet search finds nothing, so
        # the allocator gives a floor of 0 W, a separate problem.)
        bodies = [_service(f"svc-{i:04d}", i < budgeted, (12.0 + (i % 4) * 3) if i < budgeted else 2.0 + (i % 7))
                  for i in range(services)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda b: fleet.custom.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                  "llmservices", b), bodies))
        figures["create_seconds"] = round(time.monotonic() - started, 1)
        _wait("convergence", lambda: not fleet.unconverged(), timeout=600, every=1.0)
        figures["converge_seconds"] = round(time.monotonic() - started, 1)
        # The operator's own CPU over that time: on a shared machine the wall clock also counts waiting for a core.
        figures["operator_cpu_seconds_to_converge"] = round(op.cpu_seconds() - cpu_before, 1)
        figures["load_average_1m"] = round(os.getloadavg()[0], 1)
        writes_after_converge = op.counter("wattkeeper_api_writes_total")
        figures["writes_to_converge"] = int(writes_after_converge)
        print(f"{services} services converged in {figures['converge_seconds']} s "
              f"(created in {figures['create_seconds']} s), {figures['writes_to_converge']} writes, operator CPU "
              f"{figures['operator_cpu_seconds_to_converge']} s, load average {figures['load_average_1m']}", flush=True)

        # Idle: two whole passes with nothing changed, once kube-controller-manager's status has been reported. A
        # pass reconciles budgets before services, so a budget reads its services' status one pass late (which of
        # them run, their load): two passes after the services' last report, not one.
        _wait("Deployment status to reach the services", lambda: not fleet.unsettled(), timeout=900, every=2.0)
        passes = op.counter("wattkeeper_loop_passes_total", outcome="ok")
        _wait("two passes", lambda: op.counter("wattkeeper_loop_passes_total", outcome="ok") >= passes + 2,
              timeout=10 * interval_seconds + 300)
        before = op.counter("wattkeeper_api_writes_total")
        counted = ("wattkeeper_api_writes_total", "wattkeeper_decisions_total")
        snapshot = {k: v for k, v in op.metrics().items() if k[0] in counted}
        passes = op.counter("wattkeeper_loop_passes_total", outcome="ok")
        _wait("two idle passes", lambda: op.counter("wattkeeper_loop_passes_total", outcome="ok") >= passes + 2,
              timeout=10 * interval_seconds + 300)
        figures["writes_per_idle_pass"] = (op.counter("wattkeeper_api_writes_total") - before) / 2
        # What the idle passes wrote and decided, by kind: what to look at when the figure is not 0.
        figures["idle_passes_by_kind"] = {
            f"{name} {' '.join(f'{k}={v}' for k, v in labels)}": value - snapshot.get((name, labels), 0.0)
            for (name, labels), value in op.metrics().items()
            if name in counted and value != snapshot.get((name, labels), 0.0)}
        figures["pass_seconds"] = round(op.counter("wattkeeper_loop_pass_seconds"), 2)
        figures["rss_megabytes"] = round(op.rss_megabytes(), 0)
        figures["peak_rss_megabytes"] = round(op.peak_rss_megabytes(), 0)
        print(f"idle: {figures['writes_per_idle_pass']} writes per pass; a pass takes {figures['pass_seconds']} s; "
              f"RSS {figures['rss_megabytes']} MB; {figures['idle_passes_by_kind']}", flush=True)

        # A budget cut to the services' floors (what each one's smallest fleet draws; the allocator hands floors out
        # first): every budgeted service's allocation falls below its running plan, so every Deployment changes.
        def shape(d: dict[str, Any]) -> tuple[Any, Any]:
            return _annotations(d).get("wattkeeper.io/config"), d["spec"].get("replicas")
        targets = [f"svc-{i:04d}" for i in range(budgeted)]
        before = {name: shape(d) for name, d in fleet.deployments(targets).items()}
        floors = _floors_watts([s for s in fleet.services() if s["metadata"]["name"] in targets])
        projected = float(fleet.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "energybudgets",
                                                                    "scale")["status"]["projectedWatts"])
        figures["budget_cut_watts"] = [round(projected), round(floors + 1)]
        fleet.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "energybudgets", "scale",
                                                    {"spec": {"power": {"limitWatts": round(floors + 1)}}})

        def reached() -> bool:
            deployments = fleet.deployments(targets)  # the targets' only: the poll must not slow what it times
            return all(shape(deployments[n]) != before[n] for n in targets)
        figures["budget_change_seconds"] = round(_wait("the budget change", reached, timeout=120, every=0.2), 2)
        print(f"budget cut reached {budgeted} Deployments in {figures['budget_change_seconds']} s", flush=True)
        _wait("convergence after the cut", lambda: not fleet.unconverged(), timeout=300, every=1.0)

        # Restart with nothing changed: how much does it write?
        op.kill9()
        op.start()
        op.wait_up(timeout=120)
        restarted = time.monotonic()
        passes = op.counter("wattkeeper_loop_passes_total", outcome="ok")
        _wait("a pass after the restart", lambda: op.counter("wattkeeper_loop_passes_total", outcome="ok")
              >= passes + 2, timeout=10 * interval_seconds + 300)
        figures["writes_after_restart"] = int(op.counter("wattkeeper_api_writes_total"))
        figures["restart_to_second_pass_seconds"] = round(time.monotonic() - restarted, 1)
        figures["rss_megabytes_after_restart"] = round(op.rss_megabytes(), 0)
        figures["writes_after_restart_by_kind"] = {
            f"{dict(labels)['verb']} {dict(labels)['kind']}": int(v) for (n, labels), v in op.metrics().items()
            if n == "wattkeeper_api_writes_total" and v}
        decisions = {k[1]: v for k, v in op.metrics().items() if k[0] == "wattkeeper_decisions_total"}
        figures["decisions_after_restart"] = {dict(labels)["action"]: int(v) for labels, v in decisions.items()}
        print(f"restart: {figures['writes_after_restart']} writes over its first two passes and resume handlers; "
              f"decisions {figures['decisions_after_restart']}", flush=True)
        ok = True
    finally:
        op.stop()
        if ok:
            client.CoreV1Api(api_client).delete_namespace(namespace, propagation_policy="Background")
        else:
            print(f"kept namespace {namespace} and the operator's log {logs / 'operator.log'} to look at")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--budgeted", type=int, default=100)
    parser.add_argument("--interval-seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run(args.services, args.budgeted, args.interval_seconds, args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
