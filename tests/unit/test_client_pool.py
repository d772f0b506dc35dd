"""The apiserver client keeps a connection for every thread that may call it at once."""

from __future__ import annotations

from pathlib import Path

from wattkeeper.controller.runner import connections_needed, kubernetes_client
from wattkeeper.controller.settings import OperatorSettings

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_pool_holds_a_connection_per_thread(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    needed = connections_needed(OperatorSettings(metrics_port=0, health_port=0, reconcile_workers=32))
    assert needed == 69
    api = kubernetes_client(str(path), needed)
    assert api.configuration.host == "https://127.0.0.1:6443"
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] >= needed
