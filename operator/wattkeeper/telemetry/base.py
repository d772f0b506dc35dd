"""The telemetry interface the control loop reads through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class TelemetryUnavailable(Exception):
    """No usable measurement for a service. Silence is not zero: the caller holds its configuration."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ServiceObservation:
    """What was measured for one service over the last window, summed over its pods."""

    watts: float  # GPU power, all GPUs of all replicas
    output_tokens_per_second: float | None = None
    requests_per_second: float | None = None
    prompt_tokens_per_second: float | None = None
    ttft_p95_seconds: float | None = None
    itl_p95_seconds: float | None = None  # over token gaps (vllm:inter_token_latency_seconds)
    # Over finished requests: the p95 of each one's mean inter-token latency
    # (vllm:request_time_per_output_token_seconds); None where vLLM exports no such histogram (an older vLLM).
    request_itl_p95_seconds: float | None = None
    running_requests: float | None = None
    waiting_requests: float | None = None
    # The queue's growth over the window (requests/s): the slope of the waiting gauge (PromQL deriv, a least-squares
    # fit over the window's samples; https://prometheus.io/docs/prometheus/latest/querying/functions/#deriv). A
    # standing queue grows by nothing, where the mean waiting over the window counts all of it in every window.
    # None where the source has fewer than two samples of it.
    waiting_growth_per_second: float | None = None
    pods_reporting: int = 0
    power_source: str = ""  # which metric gave the watts
    # The 95th percentile of the service's 30-s finished-request rates, every 10 s over the last 10 minutes
    # (BURST_QUERY): the short-window peak the plan is sized for (issue 11 item 1). None where the source keeps no
    # history (direct scraping).
    burst_requests_per_second: float | None = None
    # The last 10 minutes at fine resolution (telemetry/history.py): requests started per
    # `arrival_resolution_seconds` bin, oldest first (vllm:time_to_first_token_seconds_count), and prompt and
    # output lengths expanded from vLLM's per-request token histograms. Empty where Prometheus has no such series.
    arrival_counts: tuple[float, ...] = ()
    arrival_resolution_seconds: float | None = None
    prompt_tokens_sample: tuple[float, ...] = ()
    output_tokens_sample: tuple[float, ...] = ()
    # Cumulative bucket rates (le, observations per second over the window; +Inf last) of
    # vllm:time_to_first_token_seconds and vllm:request_time_per_output_token_seconds: how many requests were over
    # an SLO (telemetry/buckets.py `over_threshold`). Empty where no such histogram was read.
    ttft_bucket_rates: tuple[tuple[float, float], ...] = ()
    request_itl_bucket_rates: tuple[tuple[float, float], ...] = ()

    @property
    def joules_per_token(self) -> float | None:
        if not self.output_tokens_per_second or self.output_tokens_per_second <= 0:
            return None
        return self.watts / self.output_tokens_per_second

    @property
    def mean_output_tokens(self) -> float | None:
        if not self.requests_per_second or not self.output_tokens_per_second:
            return None
        return self.output_tokens_per_second / self.requests_per_second

    @property
    def mean_input_tokens(self) -> float | None:
        if not self.requests_per_second or not self.prompt_tokens_per_second:
            return None
        return self.prompt_tokens_per_second / self.requests_per_second


class TelemetrySource(Protocol):
    def observe_service(self, namespace: str, service: str, window_seconds: float) -> ServiceObservation:
        """Measure one service's pods over the window; raise TelemetryUnavailable when nothing usable comes."""
        ...


def pod_name_pattern(service: str) -> str:
    """Regex of the pod names of a service's Deployment (<name>-<replicaset hash>-<pod suffix>).

    dcgm-exporter labels power with namespace and pod only, so pods are matched by name, the way
    kube-prometheus attributes container metrics to workloads."""
    return f"{service}-[a-z0-9]+-[a-z0-9]+"
