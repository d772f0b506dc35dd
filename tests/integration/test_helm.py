"""The Helm chart with real Helm against the local control plane: lint, template + server-side dry-run, and
install, upgrade, uninstall (the CRDs stay)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

pytestmark = [pytest.mark.integration, pytest.mark.helm]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "wattkeeper"
KUBE_VERSION = "1.36.3"
OUR_CRDS = ("llmservices.wattkeeper.io", "energybudgets.wattkeeper.io", "energyprofiles.wattkeeper.io")
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def helm(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    import localcluster

    result = subprocess.run([str(localcluster.binary("helm")), f"--kubeconfig={cluster.kubeconfig}", *args],
                            text=True, capture_output=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def template(cluster, release: str, namespace: str, *sets: str) -> list[dict]:  # type: ignore[no-untyped-def]
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for value in sets:
        args += ["--set", value]
    return [d for d in yaml.safe_load_all(helm(cluster, *args).stdout) if d]


def install_peering_crds(kubectl) -> None:  # type: ignore[no-untyped-def]
    """What `helm install` does with the chart's crds/ folder; idempotent."""
    kubectl("apply", "--server-side", "--field-manager=helm-test", "-f", str(CHART / "crds"))
    for crd in PEERING_CRDS:
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


def release_name() -> str:
    return f"wk-{uuid.uuid4().hex[:6]}"


def test_lint(cluster) -> None:  # type: ignore[no-untyped-def]
    for sets in ([], ["watchNamespaces={a,b}", "operator.telemetry=scrape"],
                 ["exporter.enabled=true", "dashboards.enabled=true", "metrics.serviceMonitor.enabled=true"],
                 ["peering.enabled=false", "rbac.clusterObservation=false", "watchNamespaces={a}"]):
        args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
        for value in sets:
            args += ["--set", value]
        out = helm(cluster, *args).stdout
        assert "0 chart(s) failed" in out
        assert "[WARNING]" not in out and "[ERROR]" not in out


def test_schema_rejects_bad_values(cluster) -> None:  # type: ignore[no-untyped-def]
    for bad in ("operator.telemetry=influx", "replicaCount=0", "watchNamespaces={Not_A_Namespace}",
                "operator.prometheusUrl=prometheus:9090", "unknownKey=1"):
        result = helm(cluster, "template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set", bad, check=False)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced", "everything-on"])
def test_template_is_accepted_by_the_api_server(cluster, kubectl, namespace, api_client, mode: str) -> None:  # type: ignore[no-untyped-def]
    install_peering_crds(kubectl)
    other = f"{namespace}-b"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other, labels={"wattkeeper-test": "1"})))
    try:
        sets = {
            "cluster-wide": [],
            "namespaced": [f"watchNamespaces={{{namespace},{other}}}"],
            "everything-on": [f"watchNamespaces={{{namespace}}}", "exporter.enabled=true", "dashboards.enabled=true",
                              "operator.telemetry=scrape", "metrics.serviceMonitor.enabled=true"],
        }[mode]
        docs = template(cluster, release_name(), namespace, *sets)
        kinds = {d["kind"] for d in docs}
        assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"} <= kinds
        # The Prometheus Operator's CRDs are not installed here: ServiceMonitors are checked by the unit tests.
        docs = [d for d in docs if d["kind"] != "ServiceMonitor"]
        manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
        result = kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=helm-test",
                         "--dry-run=server", "-f", "-", input_text=manifest)
        applied = [line for line in result.stdout.splitlines() if "serverside-applied" in line]
        assert len(applied) == len(docs), result.stdout
    finally:
        core.delete_namespace(other, propagation_policy="Background")


def _crd_names(kubectl) -> set[str]:  # type: ignore[no-untyped-def]
    return {i["metadata"]["name"] for i in json.loads(kubectl("get", "crd", "-o", "json").stdout)["items"]}


def test_install_upgrade_uninstall(cluster, kubectl, namespace, api_client) -> None:  # type: ignore[no-untyped-def]
    release = release_name()
    rbac = client.RbacAuthorizationV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    try:
        # The CRDs already exist here (installed by the test fixtures, as by an earlier install or by hand):
        # --take-ownership adopts them into the release, so the chart upgrades them from now on.
        out = helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--take-ownership").stdout
        assert "STATUS: deployed" in out
        assert f"kubectl -n {namespace} rollout status deployment/{release}-wattkeeper" in out
        assert "kubectl explain llmservice.spec" in out
        # The budget the notes tell the user to apply is valid as printed.
        budget = out[out.index("cat <<'YAML'"):].split("\n", 1)[1].split("\nYAML\n", 1)[0]
        assert yaml.safe_load(budget)["kind"] == "EnergyBudget"
        kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-", input_text=budget)

        deployment = apps.read_namespaced_deployment(f"{release}-wattkeeper", namespace)
        assert deployment.spec.replicas == 2
        container = deployment.spec.template.spec.containers[0]
        assert f"--peering={release}-wattkeeper" in container.args
        assert container.security_context.read_only_root_filesystem is True
        role = rbac.read_cluster_role(f"{release}-wattkeeper")
        assert not any("secrets" in (r.resources or []) for r in role.rules)
        custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", f"{release}-wattkeeper")
        crd = json.loads(kubectl("get", "crd", OUR_CRDS[0], "-o", "json").stdout)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

        # Upgrade: to namespaced mode, faster loop. The ClusterRole and ClusterKopfPeering give way to a Role,
        # a RoleBinding and a KopfPeering in the watched namespace; the read-only observer ClusterRole appears.
        helm(cluster, "upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
             "--set", f"watchNamespaces={{{namespace}}}", "--set", "operator.intervalSeconds=10")
        deployment = apps.read_namespaced_deployment(f"{release}-wattkeeper", namespace)
        args = deployment.spec.template.spec.containers[0].args
        assert f"--namespace={namespace}" in args and "--interval-seconds=10" in args
        rbac.read_namespaced_role(f"{release}-wattkeeper", namespace)
        rbac.read_namespaced_role_binding(f"{release}-wattkeeper", namespace)
        observer = rbac.read_cluster_role(f"{release}-wattkeeper-observer")
        assert {v for r in observer.rules for v in r.verbs} == {"list", "watch"}
        with pytest.raises(client.ApiException) as gone:
            rbac.read_cluster_role(f"{release}-wattkeeper")
        assert gone.value.status == 404
        custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", f"{release}-wattkeeper")
        assert "REVISION: 2" in helm(cluster, "status", release, "--namespace", namespace).stdout

        out = helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout=60s").stdout
        name, release = f"{release}-wattkeeper", ""
        assert "These resources were kept due to the resource policy" in out
        assert set(OUR_CRDS) | set(PEERING_CRDS) <= _crd_names(kubectl), "the CRDs must outlive the release"
        for read in (lambda: apps.read_namespaced_deployment(name, namespace),
                     lambda: rbac.read_cluster_role(f"{name}-observer"),
                     lambda: rbac.read_namespaced_role(name, namespace)):
            with pytest.raises(client.ApiException) as gone:
                read()
            assert gone.value.status == 404
    finally:
        if release:
            helm(cluster, "uninstall", release, "--namespace", namespace, check=False)
        # Leave the shared CRDs as the fixtures made them, owned by no release.
        for crd in OUR_CRDS:
            kubectl("annotate", "crd", crd, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-",
                    check=False)
            kubectl("label", "crd", crd, "app.kubernetes.io/managed-by-", check=False)


def test_helm_test_pod_reads_the_metrics_service(cluster) -> None:  # type: ignore[no-untyped-def]
    docs = template(cluster, "wk", "ops")
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "http://wk-wattkeeper-metrics.ops.svc:8080/metrics" in pod["spec"]["containers"][0]["args"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_operator_pods_pass_restricted_pod_security_admission(cluster, api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    """The API server's PodSecurity admission, enforcing `restricted`, admits the operator's pod and the test pod."""
    core = client.CoreV1Api(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                             "pod-security.kubernetes.io/enforce-version": "latest"}}})
    docs = template(cluster, "wk", namespace)
    core.create_namespaced_service_account(namespace, next(d for d in docs if d["kind"] == "ServiceAccount"))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "namespace": namespace},
             "spec": deployment["spec"]["template"]["spec"]},
            next(d for d in docs if d["kind"] == "Pod")]
    for pod in pods:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    # And the admission really enforces here: a root pod is refused.
    root = {**pods[0], "spec": {**pods[0]["spec"], "securityContext": {"runAsUser": 0}}}
    root["spec"]["containers"] = [{**root["spec"]["containers"][0], "securityContext": {}}]
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, root, dry_run="All")
    assert refused.value.status == 403 and "restricted" in refused.value.body
