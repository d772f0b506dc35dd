"""`wattkeeper-runtime`: launch | drain | exporter | sim | fleet | loadgen."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__


def _launch(options: argparse.Namespace) -> int:
    from .launcher import LaunchError, launch

    try:
        return launch(options)
    except LaunchError as error:
        print(f"wattkeeper-runtime launch: {error}", file=sys.stderr)
        return 2


def _drain(options: argparse.Namespace) -> int:
    from .drain import run

    return run(options)


def _fake_ticker(devices: object, period_s: float = 1.0) -> None:
    """Give fake GPUs a plausible life: power wanders between idle and busy, energy integrates it."""
    import random

    from .nvml import FakeGpuDevices

    assert isinstance(devices, FakeGpuDevices)
    rng = random.Random(0)
    while True:
        for gpu in devices.gpus:
            busy = rng.random() < 0.7
            gpu.power_milliwatts = rng.randint(450_000, 690_000) if busy else rng.randint(70_000, 90_000)
            gpu.utilisation_percent = rng.randint(85, 100) if busy else 0
            gpu.memory_used_bytes = int(gpu.memory_total_bytes * 0.9)
        devices.advance(period_s)
        time.sleep(period_s)


def _exporter(options: argparse.Namespace) -> int:
    from .exporter import serve_exporter
    from .nvml import FakeGpuDevices, GpuDevices, NvmlGpuDevices
    from .podresources import PodMapper, kubelet_mapper, sidecar_mapper

    devices: GpuDevices
    if options.fake:
        devices = FakeGpuDevices(options.fake)
        threading.Thread(target=_fake_ticker, args=(devices,), daemon=True).start()
    else:
        try:
            devices = NvmlGpuDevices()
        except Exception as error:  # no driver, no libnvidia-ml.so: say so instead of a traceback
            print(
                f"wattkeeper-runtime exporter: cannot open NVML ({error}); use --fake N without GPUs", file=sys.stderr
            )
            return 1
    mapper: PodMapper | None = None
    if options.pod_mapping == "kubelet":
        mapper = kubelet_mapper(options.kubelet_socket)
    elif options.pod_mapping == "env" or (options.pod_mapping == "auto" and os.environ.get("POD_NAME")):
        mapper = sidecar_mapper(os.environ)
    with contextlib.suppress(KeyboardInterrupt):
        serve_exporter(devices, mapper, options.port, options.address)
    return 0


def _fleet(options: argparse.Namespace) -> int:
    from .fleet import run_fleet

    return run_fleet(
        kubeconfig=options.kubeconfig,
        file_sd_path=Path(options.file_sd),
        registry_path=Path(options.registry),
        label_selector=options.selector,
        namespace=options.namespace,
        speedup=options.speedup,
        log_dir=Path(options.log_dir) if options.log_dir else None,
    )


def _registry_reader(registry: Path, service: str, model: str | None) -> Callable[[], list[Any]]:
    from .loadgen import Endpoint, load_endpoints

    def read() -> list[Any]:
        try:
            endpoints = load_endpoints(registry, service)
        except (OSError, ValueError, KeyError):
            return []  # the fleet is rewriting the file; keep the endpoints we have
        return [Endpoint(e.url, model, e.pod) for e in endpoints] if model else endpoints

    return read


def _loadgen(options: argparse.Namespace) -> int:
    from .loadgen import (
        Endpoint,
        default_trace_path,
        read_azure_trace,
        replay,
        synthetic_diurnal_trace,
    )

    if options.url:
        endpoints = [Endpoint(url=u.rstrip("/"), model=options.model or "") for u in options.url]
    else:
        read = _registry_reader(Path(options.registry), options.service, options.model)
        # A rollout can leave the registry empty for a moment: wait for the fleet rather than give up.
        deadline = time.monotonic() + options.wait_for_endpoints
        while not (endpoints := read()) and time.monotonic() < deadline:
            time.sleep(1.0)
    if not endpoints:
        print(f"no endpoints for service {options.service!r} in {options.registry}", file=sys.stderr)
        return 2
    path = Path(options.trace) if options.trace else (None if options.synthetic else default_trace_path())
    if path is not None:
        trace = read_azure_trace(path)
        source = str(path)
    else:
        trace = synthetic_diurnal_trace(seed=options.seed)
        source = "synthetic diurnal trace"
    print(f"replaying {source} against {len(endpoints)} endpoint(s)", file=sys.stderr)
    summary = asyncio.run(
        replay(
            trace,
            endpoints,
            speedup=options.speedup,
            rate_scale=options.rate_scale,
            max_requests=options.max_requests,
            max_duration_s=options.duration,
            policy=options.policy,
            stream=not options.no_stream,
            refresh=None if options.url else _registry_reader(Path(options.registry), options.service, options.model),
        )
    )
    print(json.dumps(summary.to_dict(), indent=2))
    return 0 if summary.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wattkeeper-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=f"wattkeeper-runtime {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("WATTKEEPER_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    from .launcher import add_launch_arguments

    launch = commands.add_parser("launch", help="exec `vllm serve` with the plan from WATTKEEPER_* env or options")
    add_launch_arguments(launch)

    from .drain import add_drain_arguments

    drain = commands.add_parser("drain", help="preStop hook: wait until vLLM has no request in flight")
    add_drain_arguments(drain)

    exporter = commands.add_parser("exporter", help="NVML power/energy exporter for Prometheus")
    exporter.add_argument("--port", type=int, default=9400)
    exporter.add_argument("--address", default="0.0.0.0")
    exporter.add_argument("--fake", type=int, default=0, metavar="N", help="N fake GPUs instead of NVML")
    exporter.add_argument(
        "--pod-mapping",
        choices=("auto", "env", "kubelet", "none"),
        default="auto",
        help="env: sidecar (POD_NAMESPACE/POD_NAME/CONTAINER_NAME); kubelet: DaemonSet (pod-resources API); "
        "auto: env when POD_NAME is set",
    )
    exporter.add_argument("--kubelet-socket", default="/var/lib/kubelet/pod-resources/kubelet.sock")

    # `sim` takes vllm serve's arguments verbatim; they are parsed by the simulator itself.
    commands.add_parser(
        "sim", help="simulate `vllm serve` without a GPU (takes vllm serve's arguments)", add_help=False
    )

    fleet = commands.add_parser("fleet", help="one simulator per Running vLLM pod of a cluster")
    fleet.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    fleet.add_argument("--selector", default="app.kubernetes.io/managed-by=wattkeeper", help="pod label selector")
    fleet.add_argument("--namespace", default=None, help="one namespace (default: all)")
    fleet.add_argument("--file-sd", required=True, help="Prometheus file_sd JSON to write")
    fleet.add_argument("--registry", required=True, help="endpoint registry JSON for the load generator")
    fleet.add_argument("--speedup", type=float, default=1.0, help="passed to every simulator")
    fleet.add_argument("--log-dir", default=None, help="one log file per simulator")

    loadgen = commands.add_parser("loadgen", help="replay a request trace against a service")
    loadgen.add_argument("--registry", default=None, help="the fleet's registry JSON")
    loadgen.add_argument("--wait-for-endpoints", type=float, default=60.0,
                         help="seconds to wait for the service to appear in the registry")
    loadgen.add_argument("--service", default="", help="service name (or namespace/name) in the registry")
    loadgen.add_argument("--url", action="append", help="endpoint base URL instead of the registry (repeatable)")
    loadgen.add_argument("--model", default=None, help="model name to send (default: the registry's)")
    loadgen.add_argument("--trace", default=None, help="Azure-format CSV (default: the shared Azure conv trace)")
    loadgen.add_argument("--synthetic", action="store_true", help="use a synthetic diurnal trace")
    loadgen.add_argument("--seed", type=int, default=0)
    loadgen.add_argument("--speedup", type=float, default=1.0, help="replay K times faster (match the sims)")
    loadgen.add_argument("--rate-scale", type=float, default=1.0, help="multiply the request rate")
    loadgen.add_argument("--max-requests", type=int, default=None, help="stop after this many requests")
    loadgen.add_argument("--duration", type=float, default=300.0, help="stop sending after this many wall seconds")
    loadgen.add_argument("--policy", choices=("round-robin", "least-outstanding"), default="least-outstanding")
    loadgen.add_argument(
        "--no-stream", action="store_true", help="non-streaming requests: less CPU, end-to-end latency only"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `sim` forwards everything after it untouched: vLLM's flags are not this parser's business.
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] == "--log-level" else 1
    if index < len(args) and args[index] == "sim":
        _configure_logging(args[:index])
        from .sim import run

        return run(args[index + 1 :])
    options = build_parser().parse_args(args)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns everything else
    handlers = {"launch": _launch, "drain": _drain, "exporter": _exporter, "fleet": _fleet, "loadgen": _loadgen}
    if options.command == "loadgen" and not options.url and not options.registry:
        print("loadgen needs --registry and --service, or --url", file=sys.stderr)
        return 2
    return handlers[options.command](options)


def _configure_logging(global_args: Sequence[str]) -> None:
    level = os.environ.get("WATTKEEPER_LOG_LEVEL", "INFO")
    for index, arg in enumerate(global_args):
        if arg.startswith("--log-level="):
            level = arg.split("=", 1)[1]
        elif arg == "--log-level" and index + 1 < len(global_args):
            level = global_args[index + 1]
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
