"""The fleet runner: one simulator process per Running vLLM pod of a (KWOK) cluster.

It watches Pods (all namespaces, or one, filtered by a label selector, by default the pods Wattkeeper manages),
and for each pod that is Running on a node starts `wattkeeper-runtime sim` with that pod's own engine arguments on
a free loopback port; it stops the simulator when the pod goes away and restarts one that died. It writes:
- a Prometheus file_sd JSON: one target per ready simulator, labels namespace, pod, service;
- a registry JSON for the load generator: {"services": {service: [{namespace, pod, url, model}]}}.
Both are replaced atomically (write then rename) so that readers never see half a file.
A pod that goes away (KWOK deletes pods at once) is terminated as the kubelet would: it leaves the registry first
(a terminating pod is not a ready endpoint), its preStop hook runs if it is `wattkeeper-runtime drain` (against the
simulator's port), then SIGTERM, which cancels whatever is still in flight as vLLM does, and SIGKILL once the pod's
terminationGracePeriodSeconds are spent. Its power is still scraped meanwhile.
Profiler pods (label app.kubernetes.io/component=profiler, `wattkeeper-runtime profile ... --simulate`, the Job an
EnergyProfile's sweep starts) are run once each, as a kubelet would run their container: the same command with
the pod's environment and the runner's kubeconfig, against simulators of its own.
SIGTERM or SIGINT stops every child (SIGTERM, then SIGKILL after a grace period); children also get SIGTERM from
the kernel if the runner itself dies (PR_SET_PDEATHSIG), so none outlive it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .drain import add_drain_arguments, drain
from .podargs import SimTarget, sim_argv, target_of

log = logging.getLogger(__name__)

DEFAULT_SELECTOR = "app.kubernetes.io/managed-by=wattkeeper"
POWER_LIMIT_ANNOTATION = "wattkeeper.io/gpu-power-limit-watts"  # as wattkeeper_runtime.agent reads it
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temp, path)


@dataclass
class Child:
    target: SimTarget
    port: int
    process: subprocess.Popen[bytes]
    ready: bool = False
    restarts: int = 0
    started_monotonic: float = 0.0
    kill_at_monotonic: float | None = None  # set once terminating: SIGKILL after this
    drain_outcome: str = ""  # the preStop drain's result: idle, timeout, unreachable; "" without one
    power_limit: str | None = None  # the pod's wattkeeper.io/gpu-power-limit-watts last handed to the simulator

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def file_sd(children: Iterable[Child]) -> list[dict[str, Any]]:
    return [
        {
            "targets": [f"127.0.0.1:{c.port}"],
            "labels": {"namespace": c.target.namespace, "pod": c.target.pod, "service": c.target.service},
        }
        for c in sorted(children, key=lambda c: (c.target.namespace, c.target.pod))
        if c.ready
    ]


def registry(children: Iterable[Child]) -> dict[str, Any]:
    services: dict[str, list[dict[str, str]]] = {}
    for c in sorted(children, key=lambda c: (c.target.namespace, c.target.pod)):
        if c.ready:
            entry = {
                "namespace": c.target.namespace,
                "pod": c.target.pod,
                "url": c.url,
                "model": c.target.served_model_name,
            }
            services.setdefault(c.target.service, []).append(entry)
    return {"services": services}


Spawner = Callable[[list[str], Path | None], "subprocess.Popen[bytes]"]


def spawn(argv: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    output: Any = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed in our copy right below
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)  # fmt: skip
    finally:
        if output is not subprocess.DEVNULL:
            output.close()


class Fleet:
    """The children and the files; `reconcile` is called with the current pods (JSON dicts)."""

    def __init__(
        self,
        file_sd_path: Path,
        registry_path: Path,
        speedup: float = 1.0,
        python: str = sys.executable,
        log_dir: Path | None = None,
        spawner: Spawner = spawn,
        health_timeout_seconds: float = 0.5,
        kubeconfig: str | None = None,
    ) -> None:
        self.file_sd_path = file_sd_path
        self.registry_path = registry_path
        self.speedup = speedup
        self.python = python
        self.log_dir = log_dir
        self.spawner = spawner
        self.health_timeout_seconds = health_timeout_seconds
        self.children: dict[str, Child] = {}
        # Simulators of deleted pods, between removal from the registry and their exit.
        self.terminating: dict[str, Child] = {}
        self._written: tuple[str, str] | None = None
        self.kubeconfig = kubeconfig
        self.jobs: dict[str, subprocess.Popen[bytes]] = {}  # profiler pods: run once, never restarted

    def _start(self, target: SimTarget, restarts: int = 0) -> Child:
        port = free_port()
        argv = sim_argv(target, port, self.speedup, self.python)
        log_path = self.log_dir / f"{target.namespace}_{target.pod}.log" if self.log_dir else None
        log.info("starting simulator for %s/%s on port %d: %s", target.namespace, target.pod, port, " ".join(argv[3:]))
        process = self.spawner(argv, log_path)
        return Child(target, port, process, restarts=restarts, started_monotonic=time.monotonic())

    def _check_ready(self, child: Child) -> None:
        try:
            response = httpx.get(f"{child.url}/health", timeout=self.health_timeout_seconds)
            child.ready = response.status_code == 200
        except httpx.HTTPError:
            child.ready = False

    def _terminate(self, key: str, child: Child) -> None:
        """The kubelet's part: preStop (the drain, if the pod has one), SIGTERM, SIGKILL after the grace period."""
        target = child.target
        started = time.monotonic()
        child.kill_at_monotonic = started + max(2.0, target.grace_seconds)  # the kubelet's 2 s minimum
        self.terminating[key] = child
        if target.drain_args is None:
            log.info("pod %s/%s is gone: SIGTERM to its simulator (no preStop drain)", target.namespace, target.pod)
            child.process.terminate()
            return

        def prestop_then_sigterm() -> None:
            parser = argparse.ArgumentParser(add_help=False)
            add_drain_arguments(parser)
            options, _ = parser.parse_known_args(list(target.drain_args or ()))
            # The hook runs inside the grace period; the kubelet would cut it there.
            timeout_s = min(options.timeout, max(0.0, target.grace_seconds - (time.monotonic() - started)))
            log.info("pod %s/%s is gone: preStop drain (up to %gs)", target.namespace, target.pod, timeout_s)
            child.drain_outcome = drain(f"{child.url}/metrics", timeout_s, options.settle, options.poll,
                                        options.quiet_polls, log=log.info)  # fmt: skip
            if child.process.poll() is None:
                child.process.terminate()

        threading.Thread(target=prestop_then_sigterm, name=f"prestop-{target.pod}", daemon=True).start()

    def _reap(self) -> None:
        for key, child in list(self.terminating.items()):
            if child.process.poll() is not None:
                del self.terminating[key]
            elif child.kill_at_monotonic is not None and time.monotonic() >= child.kill_at_monotonic:
                log.warning("simulator of %s/%s outlived its grace period: SIGKILL", child.target.namespace,
                            child.target.pod)  # fmt: skip
                child.process.kill()

    def _reconcile_jobs(self, pods: list[Mapping[str, Any]]) -> None:
        wanted: dict[str, list[str]] = {}
        for pod in pods:
            argv = profiler_argv(pod, self.python, self.kubeconfig, self.speedup)
            if argv is not None:
                meta = pod.get("metadata") or {}
                wanted[str(meta.get("uid") or meta.get("name"))] = argv
        for key in [k for k in self.jobs if k not in wanted]:
            process = self.jobs.pop(key)
            if process.poll() is None:
                process.terminate()
        for key, argv in wanted.items():
            if key not in self.jobs:
                log.info("running profiler pod %s: %s", key, " ".join(argv[3:]))
                log_path = self.log_dir / f"profiler_{key}.log" if self.log_dir else None
                self.jobs[key] = self.spawner(argv, log_path)

    def _apply_power_limits(self, pods: list[Mapping[str, Any]]) -> None:
        """The node agent's part on a simulated node: hand each ready simulator its pod's requested GPU power
        limit (annotation wattkeeper.io/gpu-power-limit-watts), in place, as the agent would set it through NVML."""
        for pod in pods:
            meta = pod.get("metadata") or {}
            child = self.children.get(str(meta.get("uid") or ""))
            if child is None or not child.ready:
                continue
            wanted = (meta.get("annotations") or {}).get(POWER_LIMIT_ANNOTATION)
            if wanted == child.power_limit:
                continue
            try:
                watts = float(wanted) if wanted else None
                response = httpx.put(f"{child.url}/wattkeeper/gpu-power-limit", json={"watts": watts},
                                     timeout=self.health_timeout_seconds * 4)
                if response.status_code == 200:
                    child.power_limit = wanted
                    log.info("pod %s/%s: GPU power limit %s", child.target.namespace, child.target.pod,
                             response.json().get("watts"))
            except (ValueError, httpx.HTTPError) as error:  # a bad annotation fails closed: default limit
                log.warning("pod %s/%s: power limit %r not applied: %s", child.target.namespace,
                            child.target.pod, wanted, error)

    def reconcile(self, pods: Iterable[Mapping[str, Any]]) -> None:
        pods = list(pods)
        self._reconcile_jobs(pods)
        desired: dict[str, SimTarget] = {}
        for pod in pods:
            target = target_of(pod)
            if target is not None:
                desired[target.key] = target
        for key in [k for k in self.children if k not in desired]:
            self._terminate(key, self.children.pop(key))
        self._reap()
        for key, target in desired.items():
            existing = self.children.get(key)
            if existing is None:
                self.children[key] = self._start(target)
            elif existing.process.poll() is not None:
                existing.ready = False
                # Back off 1, 2, 4 ... 30 s so that a simulator that cannot start does not spin.
                backoff_s = min(30.0, 2.0**existing.restarts)
                if time.monotonic() - existing.started_monotonic >= backoff_s:
                    log.warning(
                        "simulator of %s/%s exited with %s: restarting",
                        target.namespace,
                        target.pod,
                        existing.process.returncode,
                    )
                    self.children[key] = self._start(target, restarts=existing.restarts + 1)
        for child in self.children.values():
            if not child.ready and child.process.poll() is None:
                self._check_ready(child)
        self._apply_power_limits(pods)
        self.write_files()

    def write_files(self) -> None:
        # Terminating simulators are still scraped (their pods' power counts until they stop) but get no traffic.
        sd = file_sd([*self.children.values(), *self.terminating.values()])
        reg = registry(self.children.values())
        fingerprint = (json.dumps(sd, sort_keys=True), json.dumps(reg, sort_keys=True))
        if fingerprint != self._written:
            write_json_atomic(self.file_sd_path, sd)
            write_json_atomic(self.registry_path, reg)
            self._written = fingerprint

    def stop_all(self) -> None:
        for process in self.jobs.values():
            if process.poll() is None:
                process.terminate()
        self.jobs = {}
        children = [*self.children.values(), *self.terminating.values()]
        self.children, self.terminating = {}, {}
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 5.0
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.write_files()


def profiler_argv(pod: Mapping[str, Any], python: str, kubeconfig: str | None, speedup: float) -> list[str] | None:
    """The command a scheduled simulated profiler pod runs here, or None (not a profiler pod, or one for a GPU).

    Scheduled, not Running: KWOK's stages mark a Job's pod Succeeded within a second, while the profiler here
    takes minutes; so it runs until it is done or its pod is deleted, whatever phase KWOK reports."""
    meta = pod.get("metadata") or {}
    scheduled = bool((pod.get("spec") or {}).get("nodeName")) and not meta.get("deletionTimestamp")
    if (meta.get("labels") or {}).get("app.kubernetes.io/component") != "profiler" or not scheduled:
        return None
    containers = (pod.get("spec") or {}).get("containers") or []
    args = [str(a) for a in (containers[0].get("args") or [])] if containers else []
    if not args or args[0] != "profile" or "--simulate" not in args:
        return None  # a real sweep needs real GPUs: nothing to run on a simulated node
    env = {e["name"]: str(e["value"]) for e in containers[0].get("env") or [] if e.get("value") is not None}
    argv = [python, "-m", "wattkeeper_runtime.cli", *args, "--namespace", str(meta.get("namespace", "")),
            "--speedup", f"{speedup:g}"]
    if kubeconfig:
        argv += ["--kubeconfig", kubeconfig]
    if env.get("JOB_NAME"):
        argv = ["env", f"JOB_NAME={env['JOB_NAME']}", f"POD_NAME={meta.get('name', '')}", *argv]
    return argv


class PodSource:
    """Lists pods and wakes the runner when any of them changes (a watch in a background thread)."""

    def __init__(self, kubeconfig: str | None, label_selector: str, namespace: str | None) -> None:
        from kubernetes import client, config

        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self._api = client.ApiClient()
        self._core = client.CoreV1Api(self._api)
        self.label_selector = label_selector
        self.namespace = namespace
        self.changed = threading.Event()
        self.stopping = threading.Event()
        self._resource_version: str | None = None

    def _list_call(self) -> Callable[..., Any]:
        if self.namespace:
            core, namespace = self._core, self.namespace
            return lambda **kw: core.list_namespaced_pod(namespace, **kw)
        return self._core.list_pod_for_all_namespaces

    def list(self) -> list[dict[str, Any]]:
        result = self._list_call()(label_selector=self.label_selector or None, _request_timeout=30)
        self._resource_version = result.metadata.resource_version
        return [self._api.sanitize_for_serialization(pod) for pod in result.items]

    def start_watch(self) -> None:
        threading.Thread(target=self._watch_forever, name="pod-watch", daemon=True).start()

    def _watch_forever(self) -> None:
        from kubernetes import watch

        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self._list_call(),
                    label_selector=self.label_selector or None,
                    resource_version=self._resource_version,
                    timeout_seconds=30,
                    _request_timeout=40,
                )
                for _event in stream:
                    self.changed.set()
                    if self.stopping.is_set():
                        return
            except Exception as error:  # expired resource version, apiserver restart: re-list via the main loop
                log.debug("pod watch ended (%s); retrying", error)
                self._resource_version = None
                self.changed.set()
                self.stopping.wait(1.0)


def run_fleet(
    kubeconfig: str | None,
    file_sd_path: Path,
    registry_path: Path,
    label_selector: str = DEFAULT_SELECTOR,
    namespace: str | None = None,
    speedup: float = 1.0,
    log_dir: Path | None = None,
    resync_seconds: float = 1.0,
) -> int:
    """Entry point of `wattkeeper-runtime fleet`: run until SIGTERM/SIGINT, then stop every simulator."""
    source = PodSource(kubeconfig, label_selector, namespace)
    fleet = Fleet(file_sd_path, registry_path, speedup=speedup, log_dir=log_dir, kubeconfig=kubeconfig)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the fleet", signum)
        stop.set()
        source.changed.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        fleet.write_files()  # empty files at once, so Prometheus and the load generator can start
        source.start_watch()
        while not stop.is_set():
            try:
                fleet.reconcile(source.list())
            except Exception as error:  # the apiserver may be restarting; keep the children, retry
                log.warning("listing pods failed: %s", error)
            # Wake on a pod change, or after resync_seconds to check children's health and readiness.
            source.changed.wait(resync_seconds)
            source.changed.clear()
    finally:
        source.stopping.set()
        fleet.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("fleet stopped")
    return 0
