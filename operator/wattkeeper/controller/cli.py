"""`wattkeeper run`: the operator process."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from prometheus_client import start_http_server

from .runner import build_dependencies, connections_needed, kubernetes_client, run_operator
from .settings import OperatorSettings


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    for key in ("interval_seconds", "telemetry", "prometheus_url", "peering", "metrics_port", "health_port"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    for key in ("profiler_image", "profiler_service_account"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.power_limits:
        overrides["power_limits"] = True
    if args.canaries:
        overrides["canaries"] = True
    if args.per_request_routing:
        overrides["per_request_routing"] = True
    if args.namespace:
        overrides["namespaces"] = args.namespace
    settings = OperatorSettings(**overrides)
    deps = build_dependencies(settings, kubernetes_client(args.kubeconfig, connections_needed(settings)))
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=deps.metrics.registry)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    run_operator(deps, liveness_endpoint=liveness)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the operator against the current kubeconfig (or in-cluster)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig path (default: in-cluster, then KUBECONFIG)")
    parser.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--interval-seconds", type=float, default=None, help="control-loop interval (default 30)")
    parser.add_argument("--telemetry", choices=["prometheus", "scrape"], default=None)
    parser.add_argument("--prometheus-url", default=None)
    parser.add_argument("--peering", default=None, help="kopf peering name; two replicas with one active")
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--health-port", type=int, default=None)
    parser.add_argument("--power-limits", action="store_true", default=False,
                        help="plan GPU power limits and annotate running pods for the node agent (chart: agent.enabled)")
    parser.add_argument("--canaries", action="store_true", default=False,
                        help="canary untried configurations beside the fleet (env WATTKEEPER_CANARIES=true)")
    parser.add_argument("--per-request-routing", action="store_true", default=False,
                        help="requests reach the pods through a per-request router: plan each replica for its share "
                             "of a burst (env WATTKEEPER_PER_REQUEST_ROUTING=true)")
    parser.add_argument("--profiler-image", default=None, help="image of the profiler Job (EnergyProfile sweeps)")
    parser.add_argument("--profiler-service-account", default=None, help="ServiceAccount of the profiler Job")
    parser.set_defaults(func=_run)
