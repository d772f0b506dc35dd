"""The profiler (`wattkeeper-runtime profile`): measure an EnergyProfile's sweep and write the points into its status.

For each configuration of the sweep (precision x TP x max-num-seqs x GPU power limit) it starts the server with
the launcher's own `vllm serve` argv (`plan_argv`, as the operator's pods run it) or, with --simulate, the GPU-less
simulator with the same arguments; drives it with a closed loop of the load generator's requests (`send_one`) at
each concurrency and prompt/output shape; and measures, over a window after a warm-up:
- energy from the GPU energy counter: NVML's nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded;
  pynvml.py:3969 in nvidia-ml-py 13.615.71) summed over the replica's GPUs; in simulation the simulator's
  dcgm-exporter series DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (mJ), which the energy model drives;
- output tokens from vLLM's counter vllm:generation_tokens_total, the running batch from the gauge
  vllm:num_requests_running (sampled), ITL p50/p90 and TTFT p95 from the deltas of vLLM's histograms
  vllm:inter_token_latency_seconds and vllm:time_to_first_token_seconds (names as vLLM 0.11 exports them);
and writes each point with its provenance (GPU model, driver, vLLM version, time; "simulated" where it is).

GPU power limits are applied through the node agent, not by this process (it needs no privilege): the profiler
pod is a managed pod, it writes wattkeeper.io/gpu-power-limit-watts on itself and waits until NVML shows the
limit in force. In simulation the limit goes to the simulator (--gpu-power-limit-watts).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .launcher import LaunchPlan, plan_argv
from .loadgen import Endpoint, TraceRequest, send_one

log = logging.getLogger(__name__)

ANNOTATION_REQUEST = "wattkeeper.io/gpu-power-limit-watts"


@dataclass(frozen=True)
class SweepConfig:
    precision: str
    tensor_parallel: int
    max_num_seqs: int
    gpu_power_limit_watts: float | None


def sweep_configs(sweep: dict[str, Any]) -> list[SweepConfig]:
    """Every combination; the card's default limit (None) always, the listed limits besides."""
    limits: list[float | None] = [None, *[float(w) for w in sweep.get("gpuPowerLimitsWatts") or []]]
    return [SweepConfig(str(p), int(tp), int(s), w) for p, tp, s, w in itertools.product(
        sweep["precisions"], sweep.get("tensorParallel") or [1], sweep.get("maxNumSeqs") or [256], limits)]


# --- reading vLLM's /metrics ------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    generation_tokens: float = 0.0
    running: float = 0.0
    energy_millijoules: float = 0.0
    itl_sum_seconds: float = 0.0
    itl_count: float = 0.0
    itl_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count)
    ttft_buckets: tuple[tuple[float, float], ...] = ()
    gpu_model: str | None = None
    driver_version: str | None = None


def parse_metrics(text: str) -> Snapshot:
    snap = Snapshot()
    itl: dict[float, float] = {}
    ttft: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "vllm:generation_tokens_total":
                snap.generation_tokens += value
            elif name == "vllm:num_requests_running":
                snap.running += value
            # prometheus-client's parser appends _total to counter samples that lack it (dcgm-exporter's do).
            elif name in ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"):
                snap.energy_millijoules += value
                snap.gpu_model = labels.get("modelName", snap.gpu_model)
                snap.driver_version = labels.get("DCGM_FI_DRIVER_VERSION", snap.driver_version)
            elif name == "vllm:inter_token_latency_seconds_sum":
                snap.itl_sum_seconds += value
            elif name == "vllm:inter_token_latency_seconds_count":
                snap.itl_count += value
            elif name == "vllm:inter_token_latency_seconds_bucket":
                bound = float(labels["le"])
                itl[bound] = itl.get(bound, 0.0) + value
            elif name == "vllm:time_to_first_token_seconds_bucket":
                bound = float(labels["le"])
                ttft[bound] = ttft.get(bound, 0.0) + value
    snap.itl_buckets = tuple(sorted(itl.items()))
    snap.ttft_buckets = tuple(sorted(ttft.items()))
    return snap


def bucket_delta(after: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]
                 ) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


# --- energy meters ----------------------------------------------------------------------------------------------


class NvmlEnergy:
    """The replica's GPUs through NVML: the energy counter, summed (the pod sees only its own GPUs)."""

    def __init__(self, tensor_parallel: int) -> None:
        from .nvml import NvmlGpuDevices

        self.devices = NvmlGpuDevices()
        self.indices = list(range(min(tensor_parallel, self.devices.count())))
        import pynvml

        driver = pynvml.nvmlSystemGetDriverVersion()
        self.driver_version = driver.decode() if isinstance(driver, bytes) else str(driver)
        self.gpu_model = self.devices.name(0)

    def millijoules(self, _snapshot: Snapshot) -> float:
        return float(sum(self.devices.total_energy_millijoules(i) for i in self.indices))

    def limit_watts(self) -> list[float]:
        return [self.devices.power_limit_milliwatts(i) / 1000 for i in self.indices]


class SimulatedEnergy:
    """The simulator's dcgm-exporter counter, read from the same /metrics scrape."""

    gpu_model: str | None = None
    driver_version: str | None = None

    def millijoules(self, snapshot: Snapshot) -> float:
        self.gpu_model = snapshot.gpu_model or self.gpu_model
        self.driver_version = snapshot.driver_version or self.driver_version
        return snapshot.energy_millijoules


# --- the server under test --------------------------------------------------------------------------------------


@dataclass
class ProfileTarget:
    model_name: str
    model_source: str
    accelerator: str
    parameters_billions: float | None
    simulate: bool
    speedup: float = 1.0


def server_argv(target: ProfileTarget, config: SweepConfig, port: int, python: str = sys.executable) -> list[str]:
    argv = plan_argv(LaunchPlan(
        model_source=target.model_source, precision=config.precision, tensor_parallel=config.tensor_parallel,
        max_num_seqs=config.max_num_seqs, served_model_name=target.model_name, port=port,
        prequantized=False if config.precision == "fp8" else None))
    if not target.simulate:
        return argv
    sim = [python, "-m", "wattkeeper_runtime.cli", "sim", *argv[2:], "--gpu-type", target.accelerator,
           "--speedup", f"{target.speedup:g}"]
    if target.parameters_billions:
        sim += ["--model-params-b", f"{target.parameters_billions:g}"]
    if config.gpu_power_limit_watts is not None:
        sim += ["--gpu-power-limit-watts", f"{config.gpu_power_limit_watts:g}"]
    return sim


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(argv: list[str], url: str, timeout_seconds: float) -> Any:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: {' '.join(argv)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not healthy within {timeout_seconds:.0f} s")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- one point --------------------------------------------------------------------------------------------------


async def closed_loop(endpoint: Endpoint, concurrency: int, input_tokens: int, output_tokens: int,
                      seconds: float, on_tick: Callable[[], None] | None = None, tick_seconds: float = 0.5) -> int:
    """`concurrency` clients, each sending its next request when the last one finished, for `seconds`."""
    deadline = time.monotonic() + seconds
    request = TraceRequest(0.0, input_tokens, output_tokens)
    sent = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def worker() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                sent += 1
                await send_one(client, endpoint, request, stream=False)

        async def ticker() -> None:
            while time.monotonic() < deadline:
                if on_tick:
                    on_tick()
                await asyncio.sleep(tick_seconds)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(seconds)
        for task in [*workers, tick]:
            task.cancel()
        await asyncio.gather(*workers, tick, return_exceptions=True)
    return sent


def scrape(url: str) -> Snapshot:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10.0).text)


def measure_point(url: str, model_name: str, config: SweepConfig, concurrency: int, input_tokens: int,
                  output_tokens: int, window_seconds: float, warmup_seconds: float, speedup: float,
                  energy: NvmlEnergy | SimulatedEnergy) -> dict[str, Any] | None:
    """One steady-state point as an EnergyProfile ProfilePoint (wire form), or None when nothing was served."""
    endpoint = Endpoint(url=url, model=model_name)
    asyncio.run(closed_loop(endpoint, concurrency, input_tokens, output_tokens, warmup_seconds))
    running: list[float] = []

    def sample() -> None:
        with contextlib.suppress(httpx.HTTPError):
            running.append(scrape(url).running)

    before = scrape(url)
    energy_before = energy.millijoules(before)
    started = time.monotonic()
    asyncio.run(closed_loop(endpoint, concurrency, input_tokens, output_tokens, window_seconds, sample))
    after = scrape(url)
    energy_after = energy.millijoules(after)
    # The simulator's clocks (its counters, histograms and energy) run `speedup` times faster than the wall.
    seconds = (time.monotonic() - started) * speedup
    tokens = after.generation_tokens - before.generation_tokens
    joules = (energy_after - energy_before) / 1000.0
    if tokens <= 0 or joules <= 0 or seconds <= 0:
        log.warning("no tokens or no energy measured for %s at concurrency %d", config, concurrency)
        return None
    itl = bucket_delta(after.itl_buckets, before.itl_buckets)
    ttft = bucket_delta(after.ttft_buckets, before.ttft_buckets)
    # The running batch by Little's law over the window (tokens/s x mean inter-token time), which a sampled gauge
    # only approximates; the samples stand in where no inter-token latency was recorded.
    gaps = after.itl_count - before.itl_count
    if gaps > 0:
        batch = tokens / seconds * (after.itl_sum_seconds - before.itl_sum_seconds) / gaps
    else:
        batch = sum(running) / len(running) if running else float(concurrency)
    point: dict[str, Any] = {
        "precision": config.precision,
        "tensorParallel": config.tensor_parallel,
        "maxNumSeqs": config.max_num_seqs,
        "batchSize": round(max(batch, 1e-3), 3),
        "outputTokensPerSecond": round(tokens / seconds, 3),
        "watts": round(joules / seconds, 2),
        "joulesPerToken": round(joules / tokens, 6),
        "meanInputTokens": float(input_tokens),
        "meanOutputTokens": float(output_tokens),
        "concurrency": concurrency,
        "durationSeconds": round(seconds, 2),
    }
    if config.gpu_power_limit_watts is not None:
        point["gpuPowerLimitWatts"] = config.gpu_power_limit_watts
    for key, buckets, q in (("itlP50Seconds", itl, 0.5), ("itlP90Seconds", itl, 0.9),
                            ("ttftP95Seconds", ttft, 0.95)):
        value = histogram_quantile(buckets, q)
        if value is not None and value > 0:
            point[key] = round(value, 6)
    return point


# --- the whole sweep --------------------------------------------------------------------------------------------


class LimitThroughAgent:
    """Ask the node agent for a GPU power limit on this pod and wait until NVML shows it in force."""

    def __init__(self, core: Any, namespace: str, pod: str, energy: NvmlEnergy, timeout_seconds: float = 60.0):
        self.core, self.namespace, self.pod, self.energy = core, namespace, pod, energy
        self.timeout_seconds = timeout_seconds

    def set(self, watts: float | None) -> None:
        value = None if watts is None else f"{watts:g}"
        self.core.patch_namespaced_pod(self.pod, self.namespace, {"metadata": {"annotations": {
            ANNOTATION_REQUEST: value}}})
        if watts is None:
            return
        deadline = time.monotonic() + self.timeout_seconds
        while time.monotonic() < deadline:
            if all(limit <= watts + 1.0 for limit in self.energy.limit_watts()):
                return
            time.sleep(1.0)
        raise RuntimeError(f"the node agent did not apply {watts:g} W within {self.timeout_seconds:.0f} s "
                           "(is the chart's agent.enabled on?)")


def profile(target: ProfileTarget, sweep: dict[str, Any], write: Callable[[dict[str, Any]], None],
            limit_setter: LimitThroughAgent | None = None, server_timeout_seconds: float = 900.0,
            spec_points: int = 0) -> list[dict[str, Any]]:
    """Measure every configuration; `write` gets the status patch after each configuration (progress survives)."""
    points: list[dict[str, Any]] = []
    window = float(sweep.get("secondsPerPoint", 60.0))
    # In simulation a window of simulated seconds takes window/speedup wall seconds.
    wall_window = window / target.speedup if target.simulate else window
    shapes = sweep.get("shapes") or [{"inputTokens": 1024, "outputTokens": 256}]
    concurrencies = sweep.get("concurrencies") or [1, 8, 32, 128]
    energy_meter: NvmlEnergy | SimulatedEnergy | None = None
    failures: list[str] = []
    for config in sweep_configs(sweep):
        if config.gpu_power_limit_watts is not None and not target.simulate and limit_setter is None:
            failures.append(f"{config}: no way to set a power limit (not in a pod)")
            continue
        energy_meter = SimulatedEnergy() if target.simulate else NvmlEnergy(config.tensor_parallel)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            if limit_setter is not None:
                limit_setter.set(config.gpu_power_limit_watts)
            with running_server(server_argv(target, config, port), url, server_timeout_seconds):
                for shape, concurrency in itertools.product(shapes, concurrencies):
                    point = measure_point(url, target.model_name, config, int(concurrency),
                                          int(shape["inputTokens"]), int(shape["outputTokens"]), wall_window,
                                          max(wall_window * 0.25, 0.5), target.speedup if target.simulate else 1.0,
                                          energy_meter)
                    if point is not None:
                        points.append(point)
                        log.info("measured %s", json.dumps(point))
        except Exception as error:  # one configuration failing (OOM, no such checkpoint) must not lose the rest
            log.error("configuration %s failed: %s", config, error)
            failures.append(f"{config}: {error}")
        write(status_patch(points, target, energy_meter, failures, done=False, spec_points=spec_points))
    if limit_setter is not None:
        limit_setter.set(None)
    write(status_patch(points, target, energy_meter, failures, done=True, spec_points=spec_points))
    return points


def engine_version(simulate: bool) -> str | None:
    if simulate:
        return "simulated (wattkeeper-runtime sim)"
    try:
        from importlib.metadata import version

        return version("vllm")
    except Exception:
        return None


def status_patch(points: list[dict[str, Any]], target: ProfileTarget, energy: NvmlEnergy | SimulatedEnergy | None,
                 failures: list[str], done: bool, spec_points: int = 0) -> dict[str, Any]:
    provenance = {
        "gpuModel": getattr(energy, "gpu_model", None),
        "driverVersion": getattr(energy, "driver_version", None),
        "engineVersion": engine_version(target.simulate),
        "measuredAt": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "energySource": "simulated" if target.simulate else "nvml-energy-counter",
        "job": os.environ.get("JOB_NAME"),
    }
    phase = ("Measured" if points else "Failed") if done else "Running"
    return {"points": points, "provenance": provenance, "phase": phase, "pointCount": spec_points + len(points),
            "message": ("; ".join(failures[-5:]) or None) if failures else
            f"{len(points)} points measured{'' if done else ' so far'}"}
