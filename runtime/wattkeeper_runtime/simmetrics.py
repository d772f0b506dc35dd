"""The simulator's /metrics: vLLM 0.11's Prometheus metrics and dcgm-exporter's GPU metrics, same names and labels.

vLLM (vllm/v1/metrics/loggers.py, v0.11): labels `model_name` (the served model name) and `engine` ("0");
`vllm:request_success_total` adds `finished_reason` (stop, length, abort). prometheus-client writes the text, as in
vLLM itself, so counters end in `_total` and carry `_created` samples exactly like a real vLLM pod.

dcgm-exporter: one series per GPU with labels gpu, UUID, pci_bus_id, device, modelName, Hostname,
DCGM_FI_DRIVER_VERSION and, with pod attribution on, container, namespace, pod. Written by hand because
dcgm-exporter names its energy counter without the `_total` suffix that prometheus-client would add.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .engine import BatchingEngine, EngineRequest, StepResult

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)  # fmt: skip
_ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's token-count buckets)."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(float(value))
        exponent += 1


def mean_itl_seconds(request: EngineRequest) -> float:
    """A finished request's mean inter-token latency as vLLM computes mean_time_per_output_token (0.11.1
    v1/metrics/stats.py:331-342): first to last token over the tokens after the first (the prefill's token is not
    counted); 0 with fewer than two tokens, an abort before any included. vLLM observes it for every finished
    request (loggers.py:1080)."""
    if request.output_tokens < 2 or request.first_token_s is None or request.last_token_s is None:
        return 0.0
    return (request.last_token_s - request.first_token_s) / (request.output_tokens - 1)


class VllmMetrics:
    """The vLLM metrics of one simulated engine, in their own registry (several simulators may share a process)."""

    LABELS = ("model_name", "engine")

    def __init__(self, served_model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry()
        labels = (served_model_name, "0")
        reg = self.registry
        names = list(self.LABELS)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=reg)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg)

        token_buckets = build_1_2_5_buckets(max_model_len)
        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.").labels(
            *labels
        )
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.").labels(*labels)
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.").labels(*labels)
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.").labels(
            *labels
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.").labels(*labels)
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.").labels(
            *labels
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        self.success = {reason: success.labels(*labels, reason) for reason in ("stop", "length", "abort")}
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        ).labels(*labels)
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        ).labels(*labels)
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", _ITERATION_TOKEN_BUCKETS
        ).labels(*labels)
        self.max_tokens_param = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        ).labels(*labels)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        ).labels(*labels)
        # 0.11 keeps the deprecated name alongside its replacement; dashboards use either.
        self.tpot = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
            ITL_BUCKETS,
        ).labels(*labels)
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        ).labels(*labels)
        # Once per finished request, its mean ITL (vLLM 0.11.1 v1/metrics/loggers.py:802-830; same buckets as
        # inter_token_latency).
        self.request_itl = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        ).labels(*labels)
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", _REQUEST_LATENCY_BUCKETS
        ).labels(*labels)
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        ).labels(*labels)
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        ).labels(*labels)
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        ).labels(*labels)
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            _REQUEST_LATENCY_BUCKETS,
        ).labels(*labels)

    def record_step(self, result: StepResult) -> None:
        self.prompt_tokens.inc(result.prefill_tokens)
        self.generation_tokens.inc(result.generation_tokens)
        if result.prefill_tokens + result.generation_tokens:
            self.iteration_tokens.observe(result.prefill_tokens + result.generation_tokens)
        for sample in result.ttft_samples_s:
            self.ttft.observe(sample)
        for sample in result.itl_samples_s:
            self.itl.observe(sample)
            self.tpot.observe(sample)
        for request in result.finished:
            self.record_finished(request, "length")

    def record_finished(self, request: EngineRequest, reason: str) -> None:
        self.success[reason].inc()
        self.request_prompt_tokens.observe(request.prompt_tokens)
        self.request_generation_tokens.observe(request.output_tokens)
        self.max_tokens_param.observe(request.max_output_tokens)
        end = request.finished_s if request.finished_s is not None else request.arrival_s
        self.e2e.observe(end - request.arrival_s)
        self.request_itl.observe(mean_itl_seconds(request))
        if request.scheduled_s is not None:
            self.queue_time.observe(request.scheduled_s - request.arrival_s)
            self.inference_time.observe(end - request.scheduled_s)
            if request.first_token_s is not None:
                self.prefill_time.observe(request.first_token_s - request.scheduled_s)
                self.decode_time.observe(end - request.first_token_s)

    def render(self, engine: BatchingEngine) -> bytes:
        self.running.set(len(engine.running))
        self.waiting.set(len(engine.waiting))
        self.kv_usage.set(engine.kv_cache_usage())
        return generate_latest(self.registry)


# What nvidia-smi / NVML call each catalog GPU, and its memory in MiB (DCGM reports framebuffer in MiB).
GPU_MODELS: dict[str, tuple[str, int]] = {
    "H100": ("NVIDIA H100 80GB HBM3", 81559),
    "H200": ("NVIDIA H200", 143771),
    "B200": ("NVIDIA B200", 183359),
    "A100": ("NVIDIA A100-SXM4-80GB", 81920),
    "L40S": ("NVIDIA L40S", 46068),
}
DRIVER_VERSION = "570.172.08"


@dataclass(frozen=True)
class PodLabels:
    namespace: str = ""
    pod: str = ""
    container: str = ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def fake_uuid(seed: str, index: int) -> str:
    digest = hashlib.sha1(f"{seed}/{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


class DcgmMetrics:
    """dcgm-exporter-format series for the simulated GPUs of one replica (TP degree GPUs, power split evenly)."""

    def __init__(
        self,
        gpu_type: str,
        gpu_count: int,
        gpu_memory_utilization: float,
        hostname: str,
        pod: PodLabels,
        uuid_seed: str,
    ) -> None:
        self.model_name, self.memory_mib = GPU_MODELS.get(gpu_type.upper(), GPU_MODELS["H100"])
        self.gpu_count = gpu_count
        # vLLM takes its share of memory at start-up and keeps it, so framebuffer use is flat while it serves.
        self.used_mib = int(self.memory_mib * gpu_memory_utilization)
        self.hostname = hostname
        self.pod = pod
        self.uuids = [fake_uuid(uuid_seed, i) for i in range(gpu_count)]
        self._last_busy: tuple[float, float] | None = None  # (virtual time, busy seconds) at the last scrape

    def _labels(self, index: int) -> str:
        pairs = [
            ("gpu", str(index)),
            ("UUID", self.uuids[index]),
            ("pci_bus_id", f"00000000:{0x18 + index * 0x10:02X}:00.0"),
            ("device", f"nvidia{index}"),
            ("modelName", self.model_name),
            ("Hostname", self.hostname),
            ("DCGM_FI_DRIVER_VERSION", DRIVER_VERSION),
            ("container", self.pod.container),
            ("namespace", self.pod.namespace),
            ("pod", self.pod.pod),
        ]
        return ",".join(f'{key}="{_escape(value)}"' for key, value in pairs)

    def _utilisation_percent(self, engine: BatchingEngine, t_s: float) -> int:
        busy = engine.busy_seconds_at(t_s)
        last, self._last_busy = self._last_busy, (t_s, busy)
        if last is None or t_s <= last[0]:
            return 100 if engine.power_watts_at(t_s) > engine.idle_power_watts else 0
        return round(100 * min(1.0, (busy - last[1]) / (t_s - last[0])))

    def render(self, engine: BatchingEngine, t_s: float) -> bytes:
        n = self.gpu_count
        power_w = engine.average_power_watts_at(t_s) / n
        energy_mj = engine.energy_joules_at(t_s) * 1000.0 / n
        util = self._utilisation_percent(engine, t_s)
        families = [
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", f"{power_w:.3f}"),
            (
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                "counter",
                "Total energy consumption since boot (in mJ).",
                f"{int(energy_mj)}",
            ),
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", str(util)),
            ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", str(self.used_mib)),
            ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", str(self.memory_mib - self.used_mib)),
        ]
        lines: list[str] = []
        for name, kind, doc, value in families:
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{{{self._labels(i)}}} {value}" for i in range(n))
        return ("\n".join(lines) + "\n").encode()
