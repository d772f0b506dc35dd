#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, from binaries built by hack/build-tools.sh.

    python hack/localcluster.py up [--sim]      etcd + kube-apiserver + kube-controller-manager
                                               (--sim adds kube-scheduler, KWOK and fake H100 GPU nodes)
    python hack/localcluster.py down           stop everything and remove the state
    python hack/localcluster.py status

Writes the kubeconfig to .local/kubeconfig. A second `up` reuses a healthy running cluster. Only the standard
library, so it runs before the project's virtual environment exists. Tests import `ensure_cluster` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = Path(os.environ.get("WATTKEEPER_LOCAL_DIR", ROOT / ".local"))
STATE = LOCAL / "cluster"
KUBECONFIG = LOCAL / "kubeconfig"
CACHE = Path(os.environ.get("WATTKEEPER_CACHE", Path.home() / ".cache" / "wattkeeper"))
APISERVER_PORT = int(os.environ.get("WATTKEEPER_APISERVER_PORT", "16443"))
ETCD_PORT = int(os.environ.get("WATTKEEPER_ETCD_PORT", "23790"))
SERVICE_CIDR = "10.96.0.0/16"
ADMIN_TOKEN_FILE = "admin.token"
# Fake GPU nodes of the simulated cluster: KWOK keeps them Ready and marks their pods Running.
GPU_NODES = int(os.environ.get("WATTKEEPER_GPU_NODES", "4"))
GPUS_PER_NODE = 8


def versions() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def binary(name: str) -> Path:
    """Path of a cached component binary; builds the missing component first."""
    v = versions()
    folder = {
        "etcd": f"etcd-{v['ETCD_VERSION']}",
        "kwok": f"kwok-{v['KWOK_VERSION']}",
        "helm": f"helm-{v['HELM_VERSION']}",
        "prometheus-operator": f"prometheus-operator-{v['PROMETHEUS_OPERATOR_VERSION']}",
        "prometheus": f"prometheus-{v['PROMETHEUS_VERSION']}",
    }.get(name, f"k8s-{v['KUBE_VERSION']}")
    # prometheus-operator's command is cmd/operator; its CRDs lie beside it, in crds/.
    path = CACHE / "bin" / folder / ("operator" if name == "prometheus-operator" else name)
    if not path.exists():
        own = ("etcd", "kwok", "helm", "prometheus-operator", "prometheus")
        component = name if name in own else "k8s"
        subprocess.run([str(ROOT / "hack" / "build-tools.sh"), component], check=True)
    return path


def _run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def make_certs(pki: Path) -> None:
    """A CA, the apiserver's serving certificate and the service-account key pair, with openssl."""
    if (pki / "apiserver.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=wattkeeper-local-ca",
          "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt")])
    (pki / "san.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,"
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
          "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr")])
    _run(["openssl", "x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"),
          "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(pki / "san.cnf"),
          "-extensions", "ext", "-out", str(pki / "apiserver.crt")])
    _run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"])
    _run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")])
    token = os.urandom(16).hex()
    (pki / ADMIN_TOKEN_FILE).write_text(token)
    # Static tokens: the admin (system:masters) for users, tests and the controllers of this local cluster.
    (pki / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')


def kubeconfig_text(server: str, ca: Path, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "wattkeeper-local",
        "clusters": [{"name": "wattkeeper-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "wattkeeper-local", "context": {"cluster": "wattkeeper-local", "user": "admin"}}],
    }, indent=2)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _start(name: str, cmd: list[str]) -> None:
    """Start a component in its own session so it outlives this script; its pid goes to the state folder."""
    log = open(STATE / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=STATE)
    (STATE / f"{name}.pid").write_text(str(proc.pid))


def _alive(name: str) -> bool:
    pid_file = STATE / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _get(path: str, timeout: float = 2.0) -> tuple[int, str]:
    pki = STATE / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    req = urllib.request.Request(f"https://127.0.0.1:{APISERVER_PORT}{path}",
                                 headers={"Authorization": f"Bearer {(pki / ADMIN_TOKEN_FILE).read_text().strip()}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (OSError, ValueError) as err:
        return 0, str(err)


def _wait(what: str, check, timeout: float, log: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    tail = (STATE / log).read_text(errors="replace")[-3000:] if (STATE / log).exists() else ""
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s; the end of {STATE / log}:\n{tail}")


def healthy() -> bool:
    return (STATE / "pki" / ADMIN_TOKEN_FILE).exists() and _get("/readyz")[0] == 200


def kubectl(*args: str, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary("kubectl")), f"--kubeconfig={KUBECONFIG}", *args], input=input_text,
                          text=True, capture_output=True, check=check)


def apply_crds(folder: Path, names: tuple[str, ...] = ("llmservices", "energybudgets", "energyprofiles"),
               timeout_s: float = 120.0) -> None:
    """Apply the CRDs in `folder` and wait until each is Established. `kubectl wait` fails at once on a CRD the
    apiserver does not list yet (right after a cold start it did: one CI run failed there), so it is retried until
    `timeout_s`; the last error is raised."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    deadline = time.monotonic() + timeout_s
    for name in names:
        while True:
            done = kubectl("wait", "--for=condition=Established", f"crd/{name}.wattkeeper.io", "--timeout=30s",
                           check=False)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"crd/{name}.wattkeeper.io not Established after {timeout_s:.0f} s: "
                                   f"{done.stderr.strip()}")
            time.sleep(1.0)


def up_control_plane() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    pki = STATE / "pki"
    make_certs(pki)
    if not _alive("etcd"):
        if not _free(ETCD_PORT):
            raise RuntimeError(f"port {ETCD_PORT} is taken: set WATTKEEPER_ETCD_PORT")
        _start("etcd", [
            str(binary("etcd")), "--name=local", f"--data-dir={STATE / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{ETCD_PORT}", f"--advertise-client-urls=http://127.0.0.1:{ETCD_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PORT + 1}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PORT + 1}",
            f"--initial-cluster=local=http://127.0.0.1:{ETCD_PORT + 1}",
            # Throwaway state: skipping fsync makes a test cluster several times faster on small disks.
            "--unsafe-no-fsync", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ])
    _wait("etcd", lambda: not _free(ETCD_PORT), 30, "etcd.log")
    if not _alive("kube-apiserver"):
        if not _free(APISERVER_PORT):
            raise RuntimeError(f"port {APISERVER_PORT} is taken: set WATTKEEPER_APISERVER_PORT")
        _start("kube-apiserver", [
            str(binary("kube-apiserver")), f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={APISERVER_PORT}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            # Endpoints may not hold loopback addresses, so the apiserver must not publish its own.
            "--endpoint-reconciler-type=none", "--allow-privileged=true", "--v=1",
        ])
    _wait("kube-apiserver", lambda: _get("/readyz")[0] == 200, 120, "kube-apiserver.log")
    KUBECONFIG.write_text(kubeconfig_text(f"https://127.0.0.1:{APISERVER_PORT}", pki / "ca.crt",
                                          (pki / ADMIN_TOKEN_FILE).read_text().strip()))
    if not _alive("kube-controller-manager"):
        _start("kube-controller-manager", [
            str(binary("kube-controller-manager")), f"--kubeconfig={KUBECONFIG}",
            f"--authentication-kubeconfig={KUBECONFIG}", f"--authorization-kubeconfig={KUBECONFIG}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
            "--concurrent-gc-syncs=10", "--v=1",
        ])
    _link_tools()


def up_simulated_nodes(gpu_nodes: int = GPU_NODES) -> None:
    """kube-scheduler and KWOK, plus fake H100 nodes that the scheduler counts GPUs on."""
    if not _alive("kube-scheduler"):
        _start("kube-scheduler", [
            str(binary("kube-scheduler")), f"--kubeconfig={KUBECONFIG}",
            f"--authentication-kubeconfig={KUBECONFIG}", f"--authorization-kubeconfig={KUBECONFIG}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=1",
        ])
    if not _alive("kwok"):
        stages = kwok_stages_file()
        _start("kwok", [
            str(binary("kwok")), f"--kubeconfig={KUBECONFIG}", f"--config={stages}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40", "--cidr=10.244.0.0/16",
            "--enable-crds=", "--server-address=",
        ])
    for i in range(gpu_nodes):
        kubectl("apply", "--server-side", "--field-manager=localcluster", "-f", "-", input_text=json.dumps(
            gpu_node(f"gpu-h100-{i}")))


# KWOK's own "fast" stages: nodes become Ready with heartbeats, pods become Running and Ready at once.
KWOK_STAGES = ("node/fast/node-initialize.yaml", "node/heartbeat/node-heartbeat.yaml", "pod/fast/pod-ready.yaml",
               "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml")


def kwok_stages_file() -> Path:
    """Concatenate KWOK's stage definitions from the module that built the binary (the Go module cache)."""
    modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    folder = Path(modcache) / f"sigs.k8s.io/kwok@{versions()['KWOK_VERSION']}" / "kustomize" / "stage"
    if not folder.exists():
        subprocess.run(["go", "mod", "download", f"sigs.k8s.io/kwok@{versions()['KWOK_VERSION']}"], check=True,
                       cwd=ROOT / "hack" / "k8s", env={**os.environ, "GOFLAGS": "-mod=mod"})
    target = STATE / "kwok-stages.yaml"
    target.write_text("\n---\n".join((folder / name).read_text() for name in KWOK_STAGES))
    return target


def gpu_node(name: str, gpu_type: str = "H100", gpus: int = GPUS_PER_NODE) -> dict[str, object]:
    capacity = {"cpu": "128", "memory": "1024Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "nvidia.com/gpu.product": f"NVIDIA-{gpu_type}-80GB-HBM3", "wattkeeper.io/accelerator": gpu_type},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def _link_tools() -> None:
    """Put kubectl (and helm when built) on a predictable path for users: .local/bin."""
    bin_dir = LOCAL / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "helm"):
        try:
            target = binary(name) if name == "kubectl" else None
        except subprocess.CalledProcessError:
            target = None
        if name == "helm":
            v = versions()
            candidate = CACHE / "bin" / f"helm-{v['HELM_VERSION']}" / "helm"
            target = candidate if candidate.exists() else None
        link = bin_dir / name
        if target is not None:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)


COMPONENTS = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


def down() -> None:
    for name in COMPONENTS:
        pid_file = STATE / f"{name}.pid"
        if not pid_file.exists():
            continue
        try:
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(STATE, ignore_errors=True)
    KUBECONFIG.unlink(missing_ok=True)


@dataclass
class Cluster:
    kubeconfig: Path
    server: str
    ca_file: Path
    token: str


# Whether this process started the control plane (tests stop only a cluster they started).
started_here = False


def ensure_cluster(simulated_nodes: bool = False) -> Cluster:
    """Start the control plane, or reuse the healthy one already running."""
    global started_here
    if not healthy() or not _alive("kube-controller-manager"):
        up_control_plane()
        started_here = True
    if simulated_nodes:
        up_simulated_nodes()
    pki = STATE / "pki"
    return Cluster(KUBECONFIG, f"https://127.0.0.1:{APISERVER_PORT}", pki / "ca.crt",
                   (pki / ADMIN_TOKEN_FILE).read_text().strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up_p = sub.add_parser("up", help="start (or reuse) the local control plane")
    up_p.add_argument("--sim", action="store_true", help="also kube-scheduler, KWOK and fake GPU nodes")
    sub.add_parser("down", help="stop it and remove its state")
    sub.add_parser("status", help="say what runs")
    args = parser.parse_args()
    if args.cmd == "up":
        started = time.monotonic()
        ensure_cluster(simulated_nodes=args.sim)
        version = json.loads(_get("/version")[1]).get("gitVersion")
        print(f"control plane {version} ready in {time.monotonic() - started:.1f}s; "
              f"export KUBECONFIG={KUBECONFIG}  (kubectl: {LOCAL / 'bin' / 'kubectl'})")
    elif args.cmd == "down":
        down()
        print("local cluster stopped and its state removed")
    else:
        for name in COMPONENTS:
            print(f"{name:26s} {'running' if _alive(name) else 'stopped'}")
        print(f"apiserver /readyz: {'ok' if healthy() else 'not ready'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
