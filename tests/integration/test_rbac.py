"""The operator holding exactly the chart's permissions: installed with `helm install` in namespaced mode, run
in-process with a token of the chart's ServiceAccount (kopf peering included), it completes a full reconcile of
the examples without one forbidden request, and cannot read a Secret."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client import rest

from tests.support.wait import wait_for

from .test_helm import CHART, helm

pytestmark = [pytest.mark.integration, pytest.mark.helm]

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_MARKERS = ("403", "forbidden", "Forbidden", "Not enough permissions")


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def forbidden(self) -> list[str]:
        lines = []
        for record in self.records:
            text = record.getMessage() + (logging.Formatter().formatException(record.exc_info)
                                          if record.exc_info else "")
            if record.levelno >= logging.WARNING and any(m in text for m in FORBIDDEN_MARKERS):
                lines.append(f"{record.name}: {text[:500]}")
        return lines


@contextlib.contextmanager
def capture_logs() -> Iterator[Recorder]:
    recorder = Recorder()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        root.setLevel(previous)


@contextlib.contextmanager
def record_denials() -> Iterator[list[str]]:
    """Every 403 answered to the official client (the operator's own calls), even where the caller swallows it."""
    denials: list[str] = []
    original = rest.RESTClientObject.request

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return original(self, method, url, *args, **kwargs)
        except client.ApiException as err:
            if err.status == 403:
                denials.append(f"{method} {url}: {err.reason}")
            raise

    rest.RESTClientObject.request = request  # type: ignore[method-assign]
    try:
        yield denials
    finally:
        rest.RESTClientObject.request = original  # type: ignore[method-assign]


@contextlib.contextmanager
def kubeconfig_env(path: Path) -> Iterator[None]:
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous


def service_account_kubeconfig(cluster, api_client, namespace: str, name: str, path: Path) -> Path:  # type: ignore[no-untyped-def]
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=["https://kubernetes.default.svc.cluster.local"], expiration_seconds=3600))
    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(name, namespace, request).status.token
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": cluster.server,
                                                   "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": name, "namespace": namespace}}],
    }))
    return path


@pytest.fixture
def chart_release(cluster, namespace):  # type: ignore[no-untyped-def]
    """The chart installed in namespaced mode, watching the test's namespace; uninstalled afterwards."""
    release = f"wk-{uuid.uuid4().hex[:6]}"
    # The wattkeeper.io CRDs are the fixtures' (not the release's); kopf's peering CRDs come from crds/.
    helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--set", "crds.enabled=false",
         "--set", f"watchNamespaces={{{namespace}}}", "--set", "operator.intervalSeconds=2")
    yield f"{release}-wattkeeper"
    helm(cluster, "uninstall", release, "--namespace", namespace, check=False)


def _get(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def test_operator_reconciles_with_exactly_the_charts_permissions(  # type: ignore[no-untyped-def]
        cluster, api_client, kubectl, namespace, chart_release, tmp_path) -> None:
    from wattkeeper.controller.runner import OperatorThread, build_dependencies
    from wattkeeper.controller.settings import OperatorSettings

    name = chart_release  # the ServiceAccount, Role and peering object share the release's full name
    kubeconfig = service_account_kubeconfig(cluster, api_client, namespace, name, tmp_path / "sa.kubeconfig")
    sa_client = config.new_client_from_config(config_file=str(kubeconfig))

    # The examples, as a user applies them (admin credentials).
    for example in ("energybudget.yaml", "llmservice-llama-8b.yaml"):
        kubectl("apply", "--server-side", "--field-manager=user", "-n", namespace, "-f", str(ROOT / "examples" / example))

    settings = OperatorSettings(interval_seconds=2, namespaces=[namespace], telemetry="prometheus",
                                prometheus_url="http://127.0.0.1:1", peering=name)
    admin = client.CustomObjectsApi(api_client)
    with kubeconfig_env(kubeconfig), capture_logs() as logs, record_denials() as denials:
        deps = build_dependencies(settings, sa_client)
        with OperatorThread(deps):
            wait_for("the Deployment", lambda: _get(client.AppsV1Api(api_client).read_namespaced_deployment,
                                                    "llama-8b", namespace))
            wait_for("the Service", lambda: _get(client.CoreV1Api(api_client).read_namespaced_service,
                                                 "llama-8b", namespace))
            wait_for("the plan in status", lambda: (admin.get_namespaced_custom_object(
                "wattkeeper.io", "v1alpha1", namespace, "llmservices", "llama-8b").get("status") or {}).get("plan"))
            wait_for("the budget's allocation", lambda: (admin.get_namespaced_custom_object(
                "wattkeeper.io", "v1alpha1", namespace, "energybudgets", "chat-team").get("status") or {}).get(
                "allocations"))
            # The events the operator writes (it swallows a failure to write one, so look for them).
            wait_for("the operator's events", lambda: [e for e in client.CoreV1Api(api_client).list_namespaced_event(
                namespace).items if e.reporting_component == "wattkeeper.io/operator"])
            # A few control-loop ticks and kopf peering keep-alives.
            time.sleep(5)
            peering = admin.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", name)
            assert peering.get("status"), "kopf wrote no keep-alive into the peering object"

    assert deps.metrics.api_writes.labels("apply", "Deployment")._value.get() >= 1
    assert denials == [], denials
    assert logs.forbidden() == [], "\n".join(logs.forbidden())

    # The kubectl experience of what it did: printer columns with live values, events with reasons.
    table = kubectl("get", "llmservices", "-n", namespace, "-o", "wide").stdout.splitlines()
    print("\n".join(table))
    header, row = table[0].split(), table[1].split()
    assert header[:5] == ["NAME", "PRECISION", "TP", "MAXSEQS", "REPLICAS"]
    assert row[0] == "llama-8b" and row[1] in ("bf16", "fp8") and row[2].isdigit() and row[4].isdigit()
    describe = kubectl("describe", "llmservice", "llama-8b", "-n", namespace).stdout
    print(describe[describe.index("Events:"):])
    events = describe[describe.index("Events:"):]
    assert "wattkeeper" in events and "<none>" not in events
    print(kubectl("get", "energybudgets", "-n", namespace).stdout)


def test_service_account_cannot_read_secrets(cluster, api_client, namespace, chart_release, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kubeconfig = service_account_kubeconfig(cluster, api_client, namespace, chart_release, tmp_path / "sa.kubeconfig")
    sa_client = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"),
                                                             string_data={"token": "hf_xxx"}))
    sa_core = client.CoreV1Api(sa_client)
    for attempt in (lambda: sa_core.read_namespaced_secret("hf-token", namespace),
                    lambda: sa_core.list_namespaced_secret(namespace),
                    lambda: sa_core.list_secret_for_all_namespaces()):
        with pytest.raises(client.ApiException) as denied:
            attempt()
        assert denied.value.status == 403
    authz = client.AuthorizationV1Api(sa_client)
    for verb in ("get", "list", "watch"):
        for ns in (namespace, ""):
            review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
                    verb=verb, resource="secrets", namespace=ns or None))))
            assert review.status.allowed is False, (verb, ns)
    # Nor anything it never uses: deletes (but of a canary's Deployment), pods' exec, other namespaces.
    for verb, resource, group, ns in (("delete", "services", "", namespace), ("create", "pods", "", namespace),
                                      ("patch", "llmservices", "wattkeeper.io", "default"),
                                      ("update", "llmservices", "wattkeeper.io", namespace),
                                      ("list", "pods", "", namespace)):
        review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=ns))))
        assert review.status.allowed is False, (verb, resource, ns)
