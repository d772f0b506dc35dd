"""Fixtures for the control-plane tier: a real etcd + kube-apiserver + kube-controller-manager on loopback,
started once per session (or reused when already running), CRDs installed, one namespace per test."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster():  # type: ignore[no-untyped-def]
    import localcluster

    return localcluster.ensure_cluster()


@pytest.fixture(scope="session")
def api_client(cluster) -> client.ApiClient:  # type: ignore[no-untyped-def]
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def crds_installed(cluster) -> None:  # type: ignore[no-untyped-def]
    kubectl_run(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for crd in ("llmservices", "energybudgets", "energyprofiles"):
        kubectl_run(cluster, "wait", "--for=condition=Established", f"crd/{crd}.wattkeeper.io", "--timeout=60s")


def kubectl_run(cluster, *args: str, input_text: str | None = None, check: bool = True):  # type: ignore[no-untyped-def]
    import localcluster

    # kubectl's discovery cache is keyed by host:port only: another cluster that once ran on the same port (a CI
    # clone, a second checkout) leaves a stale one behind, and `explain` then misses our CRDs. One per cluster.
    cache = f"--cache-dir={cluster.kubeconfig.parent / 'kubectl-cache'}"
    result = subprocess.run([str(localcluster.binary("kubectl")), f"--kubeconfig={cluster.kubeconfig}", cache, *args],
                            input=input_text, text=True, capture_output=True)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def kubectl(cluster):  # type: ignore[no-untyped-def]
    def run(*args: str, input_text: str | None = None, check: bool = True):  # type: ignore[no-untyped-def]
        return kubectl_run(cluster, *args, input_text=input_text, check=check)

    return run


@pytest.fixture
def namespace(api_client, crds_installed) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace per test, deleted afterwards, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"wattkeeper-test": "1"})))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def apply_json(kubectl, obj: dict, namespace: str, check: bool = True):  # type: ignore[no-untyped-def]
    return kubectl("apply", "--server-side", "--field-manager=test", "-n", namespace, "-f", "-",
                   input_text=json.dumps(obj), check=check)
