"""kube-prometheus-stack out of the box: prometheus-operator (built from the Go module proxy) turns the chart's
monitors and dcgm-exporter's ServiceMonitor into a Prometheus configuration; a real Prometheus runs exactly that
configuration against simulators and exporters; the operator reads watts and tokens through it.

Prometheus is v3.5.0 (prometheus-operator v0.85.0's default version) built from the Go module proxy: Debian's
prometheus 2.42 is built without kubernetes_sd_configs ("field kubernetes_sd_configs not found in type
config.ScrapeConfig"), and every configuration prometheus-operator writes discovers through it.

The simulated cluster has no pod network. Faithful stand-ins, and where they deviate:
- Two fake GPU nodes of this test carry a pod CIDR inside 127.0.0.0/8 (KWOK allocates pod IPs from a node's
  spec.podCIDR, pkg/kwok/controllers/pod_controller.go funcPodIPWith), so every vLLM pod's IP is a loopback address
  that a simulator can bind: Prometheus scrapes <pod IP>:<containerPort> exactly as kubernetes_sd discovers it.
- Endpoints and EndpointSlices may not hold loopback addresses (k8s pkg/apis/core/validation ValidateEndpointIP),
  and ServiceMonitors discover through them. The exporters are therefore hostNetwork pods on nodes whose
  InternalIP is this machine's non-loopback address (KWOK gives hostNetwork pods the node's IP); dcgm-exporter can
  run so, its chart's DaemonSet does not by default. The exporters' processes listen on that address.
- dcgm-exporter is the simulators' own DCGM series (per GPU, labelled with the pod, as dcgm-exporter's pod mapper
  labels them), served as one exporter per node; the NVML exporter is `wattkeeper-runtime exporter --fake`.
- Prometheus runs as the operator's Prometheus pod would, with the service-account token and CA at the in-cluster
  path in a private mount namespace; KUBERNETES_SERVICE_HOST/PORT name the apiserver directly (no kube-proxy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from tests.support import kps
from tests.support.node_dcgm import NodeDcgmExporter
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "wattkeeper"
GROUP, VERSION = "wattkeeper.io", "v1alpha1"
RELEASE_LABEL = {"release": "kps"}  # kube-prometheus-stack selects monitors by its Helm release label
VLLM_PORT, SIM_DCGM_PORT = 8000, 9401
SPEEDUP = 1.0  # simulated time = wall time, so energy counters read as watts


def kubectl(cluster: Any, *args: str, input_text: str | None = None) -> str:
    import localcluster

    result = subprocess.run([str(localcluster.binary("kubectl")), f"--kubeconfig={cluster.kubeconfig}", *args],
                            input=input_text, text=True, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def apply(cluster: Any, *objs: dict[str, Any]) -> None:
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "--field-manager=kps-test", "-f", "-",
            input_text="\n---\n".join(json.dumps(o) for o in objs))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The whole stack; torn down in reverse order."""
    import localcluster
    from wattkeeper.controller.runner import OperatorThread, build_dependencies
    from wattkeeper.controller.settings import OperatorSettings
    from wattkeeper_runtime.podargs import sim_argv, target_of

    host_ip = kps.host_address()
    if host_ip is None:
        pytest.skip("no non-loopback IPv4 address: Endpoints of the exporters cannot be made")
    unshare = kps.mount_namespace_wrapper()
    if unshare is None:
        pytest.skip("unshare --mount is not allowed here: Prometheus cannot get an in-cluster service account")
    if not (localcluster.CACHE / "bin").exists():
        pytest.skip("no component cache")
    promop = localcluster.binary("prometheus-operator")
    # Debian's Prometheus is built without kubernetes_sd_configs; this one is built from the Go module proxy.
    prometheus_binary = localcluster.binary("prometheus")
    cluster = localcluster.ensure_cluster(simulated_nodes=True)
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    tmp = tmp_path_factory.mktemp("kps")
    suffix = uuid.uuid4().hex[:6]
    mon, work = f"t-mon-{suffix}", f"t-kps-{suffix}"
    cleanup: list[Callable[[], Any]] = []
    processes: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    try:
        kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(promop.parent / "crds"))
        extensions = client.ApiextensionsV1Api(api)
        for crd in ("podmonitors", "servicemonitors", "prometheuses"):
            wait_for(f"{crd} established", lambda c=crd: any(
                cond.type == "Established" and cond.status == "True"
                for cond in extensions.read_custom_resource_definition(f"{c}.monitoring.coreos.com").status.conditions
                or []))
        kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        for name in (mon, work):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
            cleanup.append(lambda n=name: core.delete_namespace(n, propagation_policy="Background"))

        # Two GPU nodes: pod IPs in a loopback /24 each, the node's own address routable (see the module doc).
        nodes = {}
        for index, kind in enumerate(("dcgm", "nvml")):
            node = localcluster.gpu_node(f"kps-{kind}-{suffix}")
            node["metadata"]["labels"]["wattkeeper.io/test-node"] = f"{kind}-{suffix}"
            node["spec"] = {"podCIDR": f"127.{100 + index}.{int(suffix[:2], 16)}.0/24"}
            apply(cluster, node)
            cleanup.append(lambda n=node["metadata"]["name"]: core.delete_node(n))
            nodes[kind] = node["metadata"]["name"]
        address = {"status": {"addresses": [{"type": "InternalIP", "address": host_ip}]}}
        for name in nodes.values():
            # A create drops status.addresses; the kubelet (here: we) reports them through the status subresource,
            # once KWOK has initialised the node (it would write its own over ours).
            wait_for(f"{name} Ready", lambda n=name: any(
                c.type == "Ready" and c.status == "True" for c in core.read_node(n).status.conditions or []))
            wait_for(f"{name} at {host_ip}", lambda n=name: core.patch_node_status(n, address) and any(
                a.address == host_ip for a in core.read_node(n).status.addresses or []))

        # The chart, installed for real: podMonitor.enabled=auto sees the monitoring.coreos.com CRDs itself.
        release = f"wk{suffix}"
        helm = [str(localcluster.binary("helm")), f"--kubeconfig={cluster.kubeconfig}"]
        subprocess.run([*helm, "install", release, str(CHART), "-n", mon, "--skip-crds", "--wait=false",
                        "--set", "crds.enabled=false", "--set", "replicaCount=1", "--set", "peering.enabled=false",
                        "--set", f"watchNamespaces={{{work}}}",
                        "--set", "podMonitor.labels.release=kps", "--set", "podMonitor.interval=1s",
                        "--set", "podMonitor.scrapeTimeout=1s",
                        "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=kps",
                        "--set", "metrics.serviceMonitor.interval=1s", "--set", "metrics.serviceMonitor.scrapeTimeout=1s",
                        "--set", "exporter.enabled=true"], check=True, capture_output=True, timeout=120)
        cleanup.append(lambda: subprocess.run([*helm, "uninstall", release, "-n", mon], capture_output=True, timeout=120))
        # The NVML exporter's DaemonSet would delete a pod with its labels on a node it does not select; its
        # stand-in below is a hostNetwork pod with those labels (see the module doc), so the DaemonSet goes.
        apps.delete_namespaced_daemon_set(f"{release}-wattkeeper-nvml-exporter", mon)

        # dcgm-exporter's chart, as its templates render with their defaults (templates/service-monitor.yaml,
        # service.yaml; values.yaml serviceMonitor.honorLabels: false) but a 1 s interval and the release label.
        dcgm_labels = {"app.kubernetes.io/name": "dcgm-exporter", "app.kubernetes.io/instance": "dcgm-exporter"}
        apply(cluster, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "dcgm-exporter", "namespace": mon, "labels": dcgm_labels},
            # Named targetPort (theirs is the number 9400): the stand-in listens on a free port of this machine.
            "spec": {"selector": dcgm_labels, "ports": [{"name": "metrics", "port": 9400, "targetPort": "metrics"}]},
        }, {
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "dcgm-exporter", "namespace": mon, "labels": {**dcgm_labels, **RELEASE_LABEL}},
            "spec": {"selector": {"matchLabels": dcgm_labels}, "namespaceSelector": {"matchNames": [mon]},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "1s", "scrapeTimeout": "1s",
                                    "honorLabels": False}]},
        })

        # The Prometheus that kube-prometheus-stack would create, with its ServiceAccount and ClusterRole.
        apply(cluster, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prometheus", "namespace": mon}},
              {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": f"prometheus-{suffix}"}, "rules": kps.PROMETHEUS_RULES},
              {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": f"prometheus-{suffix}"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"prometheus-{suffix}"},
               "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": mon}]},
              {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "metadata": {"name": "kps", "namespace": mon},
               "spec": {"version": localcluster.versions()["PROMETHEUS_VERSION"],  # the one that runs it
                        "serviceAccountName": "prometheus", "scrapeInterval": "1s", "evaluationInterval": "1s",
                        "podMonitorSelector": {"matchLabels": RELEASE_LABEL}, "podMonitorNamespaceSelector": {},
                        "serviceMonitorSelector": {"matchLabels": RELEASE_LABEL},
                        "serviceMonitorNamespaceSelector": {}}})
        cleanup.append(lambda: kubectl(cluster, "delete", "clusterrole,clusterrolebinding", f"prometheus-{suffix}",
                                       "--ignore-not-found"))

        started = time.monotonic()
        operator = kps.start_operator(promop, cluster.kubeconfig, [mon, work], tmp / "prometheus-operator.log")
        cleanup.append(operator.stop)
        raw = wait_for("the generated configuration with 4 scrape jobs", lambda: (c := kps.generated_config(api, mon, "kps"))
                       and c.count("- job_name:") >= 4 and c, timeout=90)
        statefulset = wait_for("the Prometheus StatefulSet", lambda: next(iter(apps.list_namespaced_stateful_set(
            mon, label_selector="app.kubernetes.io/name=prometheus").items), None))
        config_text = kps.expand_env(raw, kps.reloader_env(statefulset))
        (tmp / "prometheus.yaml").write_text(config_text)
        print(f"prometheus-operator wrote the configuration in {time.monotonic() - started:.1f}s")

        # The workloads: one pinned service on each node.
        for name, kind in (("llama", "dcgm"), ("qwen", "nvml")):
            body = yaml.safe_load((ROOT / "examples" / "llmservice-pinned.yaml").read_text())
            body["metadata"] = {"name": name, "namespace": work}
            body["spec"]["accelerator"] = {"type": "H100", "nodeSelector": {"wattkeeper.io/test-node": f"{kind}-{suffix}"}}
            custom.create_namespaced_custom_object(GROUP, VERSION, work, "llmservices", body)

        # The operator from the start (it renders the Deployments); its Prometheus comes up later, at a known port.
        prometheus_port = kps.free_port()
        deps = build_dependencies(OperatorSettings(
            interval_seconds=2.0, namespaces=[work], prometheus_url=f"http://127.0.0.1:{prometheus_port}",
            telemetry_window_seconds=10, metrics_port=0, health_port=0), api)
        operator_thread = OperatorThread(deps)
        operator_thread.__enter__()
        cleanup.append(lambda: operator_thread.__exit__(None, None, None))
        pods = wait_for("both services' pods Running with loopback IPs", lambda: (p := [
            pod for pod in core.list_namespaced_pod(work, label_selector="app.kubernetes.io/managed-by=wattkeeper").items
            if pod.status.phase == "Running" and pod.status.pod_ip]) and len(p) == 2 and p, timeout=90)
        sims: dict[str, str] = {}  # pod -> its DCGM side port URL
        for pod in pods:
            target = target_of(api.sanitize_for_serialization(pod))
            assert target is not None and pod.status.pod_ip.startswith("127.")
            argv = [*sim_argv(target, VLLM_PORT, SPEEDUP, sys.executable, host=pod.status.pod_ip),
                    "--dcgm-port", str(SIM_DCGM_PORT), "--hostname", pod.spec.node_name]
            log = open(tmp / f"sim-{pod.metadata.name}.log", "ab")  # noqa: SIM115
            processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            sims[pod.metadata.name] = f"http://{pod.status.pod_ip}:{SIM_DCGM_PORT}/metrics"
        by_node = {kind: next(p for p in pods if p.spec.node_name == nodes[kind]) for kind in nodes}

        # dcgm-exporter on the dcgm node; the NVML exporter (fake GPUs, pod from env) on the other.
        dcgm_port, nvml_port = kps.free_port(host_ip), kps.free_port(host_ip)
        exporter_selector = core.read_namespaced_service(f"{release}-wattkeeper-nvml-exporter", mon).spec.selector
        for name, labels, port, node in (("dcgm-exporter-x2x7z", dcgm_labels, dcgm_port, nodes["dcgm"]),
                                         ("nvml-exporter-k8v2p", exporter_selector, nvml_port, nodes["nvml"])):
            apply(cluster, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": mon, "labels": labels},
                            "spec": {"nodeName": node, "hostNetwork": True, "tolerations": [{"operator": "Exists"}],
                                     "containers": [{"name": "exporter", "image": "exporter",
                                                     "ports": [{"name": "metrics", "containerPort": port}]}]}})
        dcgm_pod = by_node["dcgm"].metadata.name
        dcgm = NodeDcgmExporter(host_ip, dcgm_port, lambda: [sims[dcgm_pod]])
        dcgm.__enter__()
        cleanup.append(lambda: dcgm.__exit__(None, None, None))
        nvml_pod = by_node["nvml"]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "wattkeeper_runtime.cli", "exporter", "--fake", "1", "--pod-mapping", "env",
             "--address", host_ip, "--port", str(nvml_port)],
            env={**os.environ, "POD_NAMESPACE": work, "POD_NAME": nvml_pod.metadata.name, "CONTAINER_NAME": "vllm"},
            stdout=open(tmp / "nvml-exporter.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True))  # noqa: SIM115

        sa = kps.service_account_files(api, mon, "prometheus", cluster.ca_file, tmp / "serviceaccount")
        import prometheus as prom

        server = prom.start_with_config(
            tmp / "prometheus", prometheus_port, config_text, wrapper=kps.in_cluster_wrapper(unshare, sa),
            env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(localcluster.APISERVER_PORT)},
            binary=str(prometheus_binary))
        cleanup.append(server.stop)

        # Load: a steady stream of completions to both services, each through its pod's IP.
        def load(url: str, model: str) -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        http.post(f"{url}/v1/completions", json={"model": model, "prompt": "hello " * 64, "max_tokens": 64})
                    except httpx.HTTPError:
                        stop.wait(0.5)

        for pod in pods:
            target = target_of(api.sanitize_for_serialization(pod))
            assert target is not None
            for _ in range(4):
                threading.Thread(target=load, args=(f"http://{pod.status.pod_ip}:{VLLM_PORT}", target.served_model_name),
                                 daemon=True).start()

        yield {"api": api, "custom": custom, "work": work, "mon": mon, "prometheus": server.url,
               "config": config_text, "tmp": tmp, "pods": {k: p.metadata.name for k, p in by_node.items()},
               "host_ip": host_ip}
    finally:
        stop.set()
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for step in reversed(cleanup):
            try:
                step()
            except Exception as error:  # keep tearing down
                print(f"cleanup step failed: {error}")


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    return list(response.json()["data"]["result"])


def test_generated_configuration_scrapes_the_vllm_pods_by_pod_discovery(env: dict[str, Any]) -> None:
    config = yaml.safe_load(env["config"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    vllm_job = next(job for name, job in jobs.items() if name.startswith("podMonitor/") and name.endswith("-vllm/0"))
    sd = vllm_job["kubernetes_sd_configs"][0]
    assert sd["role"] == "pod" and "api_server" not in sd and sd["namespaces"]["names"] == [env["work"]]
    dcgm_job = next(job for name, job in jobs.items() if name.startswith("serviceMonitor/") and "dcgm-exporter" in name)
    assert dcgm_job["honor_labels"] is False
    nvml_job = next(job for name, job in jobs.items() if name.startswith("serviceMonitor/") and "nvml-exporter" in name)
    assert nvml_job["honor_labels"] is True
    print("PodMonitor scrape job, as prometheus-operator generated it:\n" + yaml.safe_dump(vllm_job, sort_keys=False))


def test_prometheus_scrapes_every_target_it_discovers(env: dict[str, Any]) -> None:
    seen: dict[str, str] = {}

    def targets() -> dict[str, str]:
        active = httpx.get(f"{env['prometheus']}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        seen.clear()
        seen.update({f"{t['scrapePool']} {t['scrapeUrl']}": f"{t['health']} {t['lastError']}" for t in active})
        return {f"{t['scrapePool']} {t['scrapeUrl']}": t["health"] for t in active}

    wanted = ("podMonitor/", "dcgm-exporter", "nvml-exporter")
    try:
        found = wait_for("vLLM pods and both exporters up", lambda: (t := targets()) and all(
            any(w in key and health == "up" for key, health in t.items()) for w in wanted) and t, timeout=60)
    except AssertionError:
        print("targets:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(seen.items())))
        core = client.CoreV1Api(env["api"])
        for pod in core.list_namespaced_pod(env["mon"]).items:
            print(f"pod {pod.metadata.name} {pod.status.phase} {pod.status.pod_ip} {pod.spec.node_name}")
        for ep in core.list_namespaced_endpoints(env["mon"]).items:
            print(f"endpoints {ep.metadata.name} {ep.subsets}")
        raise
    print("\n".join(f"{health:5} {key}" for key, health in sorted(found.items())))
    # vLLM exports no power of its own: power is only the exporters'.
    assert not query(env["prometheus"], 'DCGM_FI_DEV_POWER_USAGE{job=~".*vllm.*"}')
    dcgm = wait_for("dcgm series", lambda: query(env["prometheus"], "DCGM_FI_DEV_POWER_USAGE"))
    assert {s["metric"]["exported_pod"] for s in dcgm} == {env["pods"]["dcgm"]}
    assert {s["metric"]["pod"] for s in dcgm} == {"dcgm-exporter-x2x7z"}  # honorLabels: false
    nvml = wait_for("NVML series", lambda: query(env["prometheus"], "wattkeeper_gpu_power_watts"))
    assert {s["metric"]["pod"] for s in nvml} == {env["pods"]["nvml"]}  # honorLabels: true
    print("a dcgm-exporter series in Prometheus:", dcgm[0]["metric"])
    print("an NVML exporter series in Prometheus:", nvml[0]["metric"])
    # Both services' series: the first target up is not the last one scraped (one was still "unknown" when a
    # single series was taken as enough, and the set below missed qwen).
    wanted_services = {(env["work"], "llama"), (env["work"], "qwen")}

    def services_seen(series: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(s["metric"].get("namespace", ""), s["metric"].get("llmservice", "")) for s in series}

    vllm = wait_for("vLLM series of both services", lambda: (v := query(env["prometheus"], "vllm:generation_tokens_total"))
                    and services_seen(v) >= wanted_services and v, timeout=60)
    print("a vLLM series in Prometheus:", vllm[0]["metric"])
    assert services_seen(vllm) == wanted_services


def test_operator_reads_watts_and_tokens_through_that_prometheus(env: dict[str, Any]) -> None:
    def observed(name: str) -> dict[str, Any] | None:
        obj = env["custom"].get_namespaced_custom_object(GROUP, VERSION, env["work"], "llmservices", name)
        status = obj.get("status") or {}
        cond = next((c for c in status.get("conditions", []) if c["type"] == "TelemetryAvailable"), None)
        figures = status.get("observed") or {}
        # At least an idle H100 (~60 W) once the window holds samples: the first rates extrapolate from few.
        if cond and cond["status"] == "True" and (figures.get("watts") or 0) > 60 and (figures.get("tokensPerSecond") or 0) > 0:
            return {"condition": cond, "observed": figures}
        return None

    for name in ("llama", "qwen"):
        wait_for(f"{name}: TelemetryAvailable=True with watts and tokens", lambda n=name: observed(n), timeout=90)
    time.sleep(12.0)  # one telemetry window (10 s) more, so that the figures below are steady-state
    for name, source in (("llama", "dcgm"), ("qwen", "nvml")):
        result = wait_for(f"{name}: still TelemetryAvailable=True", lambda n=name: observed(n), timeout=30)
        print(f"{name}: {result['condition']['message']}; observed "
              + json.dumps({k: result["observed"].get(k) for k in ("watts", "tokensPerSecond", "joulesPerToken",
                                                                     "ttftP95Seconds", "itlP95Seconds")}))
        assert source in result["condition"]["message"]


def test_arrival_counts_and_token_lengths_come_through_that_prometheus(env: dict[str, Any]) -> None:
    """The recent history the plan sizes bursts from (telemetry/history.py): requests started per bin from the
    simulators' vllm:time_to_first_token_seconds_count, and token lengths from their per-request histograms, per
    service and through the batch of a pass."""
    from wattkeeper.telemetry import PrometheusSource, TelemetryUnavailable
    from wattkeeper.telemetry.base import pod_name_pattern
    from wattkeeper.telemetry.batch import observe_prometheus

    resolution = 1.0  # the PodMonitor's interval here
    clock_at: list[float] = []

    def clock() -> float:
        clock_at.append(time.time())
        return clock_at[-1]

    source = PrometheusSource(env["prometheus"], arrival_resolution_seconds=resolution, clock=clock)
    for name in ("llama", "qwen"):
        obs = wait_for(f"{name}: arrival counts and token lengths", lambda n=name: (
            o := source.observe_service(env["work"], n, 10)) and sum(o.arrival_counts) > 60 and o.prompt_tokens_sample
            and o, timeout=90, retry_on=(TelemetryUnavailable,))
        # One bin a second for the time the counters cover (at most the 10-minute history): these pods are
        # younger than that, and bins before they existed would read as a lull (telemetry/history.py).
        assert obs.arrival_resolution_seconds == resolution and 0 < len(obs.arrival_counts) <= 600
        assert min(obs.arrival_counts) >= 0
        # ~6 requests a second without pause (10 s of scrapes at least by now): the grid ends at the last scrape,
        # so the newest bins are full too.
        assert all(c > 0 for c in obs.arrival_counts[-3:]), obs.arrival_counts[-10:]
        # Requests started (first tokens) against requests finished, from the same scrapes: they differ by the
        # requests in flight at either end (4 load threads per service) and at most a scrape's worth.
        sel = f'namespace="{env["work"]}",pod=~"{pod_name_pattern(name)}"'
        finished = sum(float(s["values"][-1][1]) - float(s["values"][0][1]) for s in httpx.get(
            f"{env['prometheus']}/api/v1/query", params={"query": f"vllm:request_success_total{{{sel}}}[630s]",
                                                         "time": f"{clock_at[-1]:.3f}"}, timeout=10,
        ).json()["data"]["result"] if len(s["values"]) >= 2)
        started = sum(obs.arrival_counts)
        print(f"{name}: {started:.1f} requests started in {sum(1 for c in obs.arrival_counts if c)} 1-s bins, "
              f"{finished:.0f} finished; prompt lengths {min(obs.prompt_tokens_sample):.0f}-"
              f"{max(obs.prompt_tokens_sample):.0f}, output {min(obs.output_tokens_sample):.0f}-"
              f"{max(obs.output_tokens_sample):.0f}")
        assert abs(started - finished) <= 8 + 0.05 * finished
        # Every request: a 384-character prompt (96 tokens at 4 characters a token) and 64 output tokens, both
        # in vLLM's (50, 100] bucket.
        assert len(obs.prompt_tokens_sample) == len(obs.output_tokens_sample) == 200
        assert all(50 <= x <= 100 for x in (*obs.prompt_tokens_sample, *obs.output_tokens_sample))
    batch = observe_prometheus(source, [(env["work"], "llama"), (env["work"], "qwen")], 10)
    for key, outcome in batch.items():
        assert not isinstance(outcome, TelemetryUnavailable), outcome
        assert 0 < len(outcome.arrival_counts) <= 600 and sum(outcome.arrival_counts) > 20, key
        assert len(outcome.prompt_tokens_sample) == 200 and len(outcome.output_tokens_sample) == 200


def test_scrape_mode_finds_each_pods_gpu_exporter_on_its_node(env: dict[str, Any]) -> None:
    """Without Prometheus: the operator's scrape source lists the vLLM pods and the exporter pods on their nodes
    through the apiserver, tokens from vLLM's port, power from the node's exporter (vLLM exports none)."""
    from wattkeeper.controller.kube import Kube
    from wattkeeper.controller.metrics import OperatorMetrics
    from wattkeeper.controller.runner import telemetry_source
    from wattkeeper.controller.settings import OperatorSettings

    settings = OperatorSettings(telemetry="scrape", scrape_port=VLLM_PORT, scrape_exporter_namespace=env["mon"])
    source = telemetry_source(settings, Kube(env["api"], "scrape-test", OperatorMetrics()))
    for name in ("llama", "qwen"):
        source.observe_service(env["work"], name, 10)  # the first scrape gives gauges only
    time.sleep(2.0)
    for name in ("llama", "qwen"):
        observed = source.observe_service(env["work"], name, 10)
        print(f"scrape mode, {name}: {observed.watts:.0f} W, {observed.output_tokens_per_second:.0f} tokens/s")
        assert observed.watts > 60 and (observed.output_tokens_per_second or 0) > 0 and observed.pods_reporting == 1
