"""`wattkeeper-runtime`: launch | drain | exporter | sim | fleet | loadgen | agent | profile."""

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


def _agent(options: argparse.Namespace) -> int:
    import signal

    from prometheus_client import start_http_server

    from .agent import AgentMetrics, KubernetesPodDirectory, PowerLimitAgent
    from .podresources import kubelet_owner_lister
    from .powercontrol import FakePowerLimitControl, NvmlPowerLimitControl, PowerLimitControl

    if not options.node_name:
        print("wattkeeper-runtime agent: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    control: PowerLimitControl
    try:
        control = FakePowerLimitControl.h100s(options.fake) if options.fake else NvmlPowerLimitControl()
    except Exception as error:
        print(f"wattkeeper-runtime agent: cannot open NVML ({error})", file=sys.stderr)
        return 1
    try:
        owners = kubelet_owner_lister(options.kubelet_socket)
    except ImportError:
        print("wattkeeper-runtime agent: grpcio is required to ask the kubelet which pod holds which GPU "
              "(pip install grpcio; the runtime image has it)", file=sys.stderr)
        return 1
    metrics = AgentMetrics()
    agent = PowerLimitAgent(control, owners, KubernetesPodDirectory(options.node_name, options.kubeconfig), metrics)
    start_http_server(options.port, options.address, registry=metrics.registry)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    agent.run(stop, options.interval)  # restores the defaults on the way out
    control.close()
    return 0


def _profile(options: argparse.Namespace) -> int:
    from .profiler import LimitThroughAgent, NvmlEnergy, ProfileTarget, profile

    group, version = "wattkeeper.io", "v1alpha1"
    if options.sweep_json:  # local: no cluster, points printed as JSON
        sweep = json.loads(Path(options.sweep_json).read_text())
        target = ProfileTarget(options.model or "", options.model_source or options.model or "", options.accelerator,
                               options.model_params_b, options.simulate, options.speedup)
        if not target.model_name:
            print("wattkeeper-runtime profile: --model is required with --sweep-json", file=sys.stderr)
            return 2
        result: dict[str, Any] = {}
        profile(target, sweep, result.update)
        print(json.dumps(result, indent=1))
        return 0 if result.get("phase") == "Measured" else 1
    if not options.profile or not options.namespace:
        print("wattkeeper-runtime profile: --profile NAME and --namespace (or POD_NAMESPACE) are required, "
              "or --sweep-json for a local run", file=sys.stderr)
        return 2
    from kubernetes import client, config

    if options.kubeconfig:
        config.load_kube_config(config_file=options.kubeconfig)
    else:
        config.load_incluster_config()
    custom = client.CustomObjectsApi()
    obj: Any = custom.get_namespaced_custom_object(group, version, options.namespace, "energyprofiles",
                                                   options.profile)
    spec = obj["spec"]
    sweep = spec.get("sweep")
    if not sweep:
        print(f"EnergyProfile {options.profile} has no spec.sweep", file=sys.stderr)
        return 2
    simulate = options.simulate or bool(sweep.get("simulate"))
    target = ProfileTarget(spec["modelName"], sweep.get("modelSource") or spec["modelName"], spec["accelerator"],
                           sweep.get("parametersBillions"), simulate, options.speedup)

    def write(patch: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object_status(group, version, options.namespace, "energyprofiles",
                                                     options.profile, {"status": patch})

    limit_setter = None
    pod = os.environ.get("POD_NAME")
    if not simulate and pod and sweep.get("gpuPowerLimitsWatts"):
        limit_setter = LimitThroughAgent(client.CoreV1Api(), options.namespace, pod,
                                         NvmlEnergy(max(sweep.get("tensorParallel") or [1])))
    points = profile(target, sweep, write, limit_setter, spec_points=len(spec.get("points") or []))
    return 0 if points else 1


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

    agent = commands.add_parser("agent", help="node agent: apply the GPU power limits the operator requests")
    agent.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node (downward API)")
    agent.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    agent.add_argument("--kubelet-socket", default="/var/lib/kubelet/pod-resources/kubelet.sock")
    agent.add_argument("--interval", type=float, default=5.0, help="seconds between passes")
    agent.add_argument("--port", type=int, default=9401, help="Prometheus metrics port")
    agent.add_argument("--address", default="0.0.0.0")
    agent.add_argument("--fake", type=int, default=0, metavar="N", help="N fake GPUs instead of NVML (tests)")

    prof = commands.add_parser("profile", help="measure an EnergyProfile's sweep and write status.points")
    prof.add_argument("--profile", default=None, help="the EnergyProfile to measure (its spec.sweep)")
    prof.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"))
    prof.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    prof.add_argument("--simulate", action="store_true", help="drive the GPU-less simulator instead of vLLM")
    prof.add_argument("--speedup", type=float, default=1.0, help="simulation only: simulated time runs faster")
    prof.add_argument("--sweep-json", default=None, help="local run: a sweep (EnergyProfile spec.sweep form)")
    prof.add_argument("--model", default=None, help="local run: the model name")
    prof.add_argument("--model-source", default=None, help="local run: the checkpoint (default: the name)")
    prof.add_argument("--model-params-b", type=float, default=None, help="local run: parameters, billions")
    prof.add_argument("--accelerator", default="H100", help="local run: the GPU type")

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
    handlers = {"launch": _launch, "drain": _drain, "exporter": _exporter, "fleet": _fleet, "loadgen": _loadgen,
                "agent": _agent, "profile": _profile}
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
