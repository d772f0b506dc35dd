"""kube-prometheus-stack's moving parts on the local cluster: prometheus-operator (built from the Go module proxy)
with its CRDs, the Prometheus configuration it generates, and a Debian Prometheus that runs exactly that
configuration as if it were the operator's Prometheus pod.

What a Prometheus pod has and a process on the host lacks, and how it is given:
- the Secret prometheus-<name> holds prometheus.yaml.gz; the pod's config-reloader gunzips it and expands $(VAR)
  from its own environment (POD_NAME, SHARD: the shard relabelling keeps targets whose hash matches $(SHARD)).
  `expanded_config` does the same with the env of the config-reloader container in the StatefulSet the operator
  rendered (thanos pkg/reloader: `\\$\\(([a-zA-Z_0-9]+)\\)`, an unset variable is an error).
- kubernetes_sd_configs without api_server use the in-cluster config: KUBERNETES_SERVICE_HOST/PORT and the
  service-account token and CA under /var/run/secrets/kubernetes.io/serviceaccount. Prometheus gets a private
  mount namespace (`unshare --mount`) with a tmpfs on /run holding a real token of its ServiceAccount (TokenRequest)
  and the cluster CA; KUBERNETES_SERVICE_HOST/PORT point at the apiserver itself (no kube-proxy here).
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

_ENV_REF = re.compile(r"\$\(([a-zA-Z_0-9]+)\)")

# kube-prometheus-stack's Prometheus ClusterRole (templates/prometheus/clusterrole.yaml), what service discovery needs.
PROMETHEUS_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["nodes", "nodes/metrics", "services", "endpoints", "pods"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "list", "watch"]},
    {"nonResourceURLs": ["/metrics", "/metrics/cadvisor"], "verbs": ["get"]},
]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def host_address() -> str | None:
    """A non-loopback IPv4 address of this machine: Endpoints may not hold loopback addresses."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
        if match:
            return match.group(1)
    return None


def mount_namespace_wrapper() -> list[str] | None:
    """`unshare` arguments that give a child a private mount namespace, or None where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    wrapper = [unshare, "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run([*wrapper, "true"], capture_output=True, timeout=10)
    return wrapper if probe.returncode == 0 else None


def expand_env(text: str, env: dict[str, str]) -> str:
    """The config-reloader's $(VAR) expansion."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise KeyError(f"the generated configuration refers to $({name}), unset in the config-reloader")
        return env[name]

    return _ENV_REF.sub(replace, text)


def reloader_env(statefulset: client.V1StatefulSet) -> dict[str, str]:
    """The environment of the config-reloader container of the operator's StatefulSet, for its first pod."""
    pod_name = f"{statefulset.metadata.name}-0"
    containers = statefulset.spec.template.spec.containers
    reloader = next(c for c in containers if c.name == "config-reloader")
    env: dict[str, str] = {}
    for var in reloader.env or []:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from and var.value_from.field_ref and var.value_from.field_ref.field_path == "metadata.name":
            env[var.name] = pod_name
    return env


def generated_config(api: client.ApiClient, namespace: str, prometheus: str) -> str | None:
    """prometheus.yaml.gz of the Secret the operator writes for a Prometheus, gunzipped; None until it exists."""
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(f"prometheus-{prometheus}", namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    data = (secret.data or {}).get("prometheus.yaml.gz")
    return gzip.decompress(base64.b64decode(data)).decode() if data else None


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(binary: Path, kubeconfig: Path, namespaces: list[str], log_path: Path) -> OperatorProcess:
    """prometheus-operator against the local apiserver (through KUBECONFIG, k8sutil.NewClusterConfig), limited to
    the test's namespaces, its web port on a free loopback port."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [str(binary), f"--namespaces={','.join(namespaces)}", f"--web.listen-address=127.0.0.1:{free_port()}",
         "--log-level=info"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    return OperatorProcess(process, log_path)


def service_account_files(api: client.ApiClient, namespace: str, name: str, ca_path: Path, folder: Path) -> Path:
    """token, ca.crt and namespace as the kubelet projects them into a pod of ServiceAccount `name`."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[],
                                                                                 expiration_seconds=3600))
    token = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request).status.token
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    shutil.copy(ca_path, folder / "ca.crt")
    (folder / "namespace").write_text(namespace)
    return folder


def in_cluster_wrapper(unshare: list[str], sa_folder: Path) -> list[str]:
    """A command prefix that execs its arguments with `sa_folder` at the in-cluster service-account path."""
    script = ('run=$(readlink -f /var/run) && mount -t tmpfs tmpfs "$run" && '
              'mkdir -p "$run"/secrets/kubernetes.io/serviceaccount && '
              'cp "$0"/token "$0"/ca.crt "$0"/namespace "$run"/secrets/kubernetes.io/serviceaccount/ && exec "$@"')
    return [*unshare, "sh", "-c", script, str(sa_folder)]
