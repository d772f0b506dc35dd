"""Assemble the dependencies and run kopf: from `wattkeeper run` or in-process from tests."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any

import kopf
from kubernetes import client, config

from wattkeeper.energy.model import EnergyModel
from wattkeeper.telemetry import DirectScrapeSource, PrometheusSource, TelemetrySource
from wattkeeper.telemetry.scrape import ScrapeTarget, exporter_urls_by_node

from .handlers import build_registry
from .kube import Kube
from .loop import ControlLoop
from .metrics import OperatorMetrics
from .services import Dependencies, scrape_selectors
from .settings import OperatorSettings

log = logging.getLogger(__name__)


def kubernetes_client(kubeconfig: str | None = None, connections: int | None = None) -> client.ApiClient:
    """`connections`: how many requests may be in flight at once. urllib3 keeps that many connections to the
    apiserver; its default here (5 per CPU the process sees) is fewer than the operator's threads on a one- or
    two-CPU node, and each request past the pool opens a TLS connection and drops it after."""
    cfg = client.Configuration()
    if connections is not None:
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, connections)
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, client_configuration=cfg)
    try:
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    except config.ConfigException:
        return config.new_client_from_config(client_configuration=cfg)


def connections_needed(settings: OperatorSettings) -> int:
    """The operator's threads that may call the apiserver at once: a pass's (or a budget change's) reconcile
    pool, kopf's handler threads (the pool's size plus 4, `handlers.configure`) and the control loop."""
    return 2 * settings.reconcile_workers + 5


def telemetry_source(settings: OperatorSettings, kube: Kube) -> TelemetrySource:
    if settings.telemetry == "scrape":
        warned: list[bool] = []

        def list_pods(namespace: str, service: str) -> Iterable[ScrapeTarget]:
            pods: list[dict[str, Any]] = []
            for selector in scrape_selectors(service):  # a canary's name (`<service>-canary`) tries its own
                pods = kube.running_pods(namespace, selector)
                if pods:
                    break
            exporters: dict[str, tuple[str, ...]] = {}
            try:
                if pods:
                    exporters = exporter_urls_by_node(
                        [p for sel in settings.scrape_exporter_selectors
                         for p in kube.running_pods_anywhere(sel, settings.scrape_exporter_namespace)])
            except client.ApiException as error:  # e.g. no `list pods` where the exporters run: say so once, go on
                if not warned:
                    warned.append(True)
                    log.warning("cannot list the GPU exporters (%s %s): only pods that serve their own power count; "
                                "set scrapeExporterNamespace", error.status, error.reason)
            for pod in pods:
                ip = (pod.get("status") or {}).get("podIP")
                if ip:
                    node = (pod.get("spec") or {}).get("nodeName", "")
                    yield ScrapeTarget(pod["metadata"]["name"], f"http://{ip}:{settings.scrape_port}/metrics",
                                       exporters.get(node, ()))
        return DirectScrapeSource(list_pods)
    return PrometheusSource(settings.prometheus_url, arrival_resolution_seconds=settings.arrival_resolution_seconds)


def build_dependencies(settings: OperatorSettings, api_client: client.ApiClient,
                       telemetry: TelemetrySource | None = None, metrics: OperatorMetrics | None = None) -> Dependencies:
    metrics = metrics or OperatorMetrics()
    kube = Kube(api_client, settings.field_manager, metrics, timeout_seconds=settings.request_timeout_seconds)
    return Dependencies(
        kube=kube,
        telemetry=telemetry or telemetry_source(settings, kube),
        energy_model=EnergyModel.default(),
        settings=settings,
        metrics=metrics,
    )


def run_operator(deps: Dependencies, stop_flag: Any = None, ready_flag: Any = None,
                 liveness_endpoint: str | None = None) -> None:
    """Run kopf until stop_flag is set (or forever). Blocking."""
    settings = deps.settings
    registry = build_registry(settings)
    namespaces = settings.namespaces
    loop = ControlLoop(deps)
    deps.liveness = loop.problem
    loop.start()
    try:
        _run_kopf(deps, registry, namespaces, stop_flag, ready_flag, liveness_endpoint)
    finally:
        loop.close()


def _run_kopf(deps: Dependencies, registry: kopf.OperatorRegistry, namespaces: list[str], stop_flag: Any,
              ready_flag: Any, liveness_endpoint: str | None) -> None:
    settings = deps.settings
    asyncio.run(kopf.operator(
        registry=registry,
        memo=kopf.Memo(deps=deps),
        standalone=settings.peering is None,
        peering_name=settings.peering,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
    ))


class OperatorThread:
    """The operator in a background thread, for tests and the demo. Stops cleanly."""

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wattkeeper-operator", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            run_operator(self.deps, self.stop_flag, self.ready_flag)
        except BaseException as err:
            self.error = err

    def __enter__(self) -> OperatorThread:
        self.thread.start()
        if not self.ready_flag.wait(60):
            raise RuntimeError(f"operator did not start: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(30)
