"""Operator settings: from `wattkeeper run` flags or WATTKEEPER_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wattkeeper import __version__


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WATTKEEPER_", extra="ignore")

    interval_seconds: float = Field(default=30.0, gt=0, description="Control-loop interval.")
    telemetry: str = Field(default="prometheus", description="prometheus or scrape.")
    prometheus_url: str = Field(default="http://prometheus-operated.monitoring:9090")
    telemetry_window_seconds: float = Field(default=60.0, gt=0, description="Window of rates and averages.")
    # Bins of the arrival history read from Prometheus (telemetry/history.py): the vLLM pods' scrape interval (the
    # chart's podMonitor.interval); finer bins only spread one scrape's increase over several.
    arrival_resolution_seconds: float = Field(
        default=15.0, gt=0, description="Bin width of the arrival counts (the vLLM scrape interval).")
    # Verify before rollout (issue 11 item 3): replay the cheapest candidates on arrivals synthesised from the
    # arrival counts and token histograms before one is chosen (control/types.py Tuning.verify_by_replay).
    verify_by_replay: bool = Field(
        default=False, description="Verify the cheapest plans by replaying the recent arrivals.")
    # Canaries (control/types.py Tuning.canaries): one replica of an untried configuration the model says would save
    # enough serves beside the service's Deployment (`<name>-canary`) until its own latency margin is learned. Off by
    # default, as in the core: on the benchmark's one-hour traces a canary cost more than it found (bench/README.md).
    canaries: bool = Field(
        default=False, description="Canary untried configurations beside the fleet before restarting into them.")
    # Per-request routing (control/types.py Tuning.per_request_routing): the vLLM pods sit behind a router that
    # picks a pod per request (vLLM's router, the Gateway API inference extension), so a burst spreads over them.
    # Off: the Service the chart renders balances connections, and one client's burst may reach one pod.
    per_request_routing: bool = Field(
        default=False, description="Requests are routed one by one: plan each replica for its share of a burst.")
    field_manager: str = Field(default="wattkeeper", description="Server-side apply field manager.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty: all.")
    peering: str | None = Field(default=None, description="kopf peering name; None runs standalone.")
    metrics_port: int = Field(default=8080, description="Port of /metrics; 0 disables.")
    health_port: int = Field(default=8081, description="Port of /healthz; 0 disables.")
    power_correction_smoothing: float = Field(default=0.3, gt=0, le=1, description="EWMA weight of a new ratio.")
    power_correction_bounds: tuple[float, float] = (0.5, 2.0)
    decisions_kept: int = 10
    scrape_port: int = 8000
    # --telemetry scrape: GPU power comes from the exporter pods on each vLLM pod's node (vLLM exports none). These
    # label selectors find them: dcgm-exporter's chart, the GPU Operator's dcgm-exporter, this chart's NVML exporter.
    scrape_exporter_selectors: list[str] = Field(default_factory=lambda: [
        "app.kubernetes.io/name=dcgm-exporter", "app=nvidia-dcgm-exporter", "app.kubernetes.io/component=nvml-exporter",
    ])
    scrape_exporter_namespace: str | None = Field(
        default=None, description="Namespace of the GPU exporters; None: every namespace (cluster-wide list pods).")
    # The GPU power-limit lever: plan gpuPowerLimitWatts and write it onto running pods for the node agent
    # (`wattkeeper-runtime agent`). Off: plans never set a limit (nothing would apply it).
    power_limits: bool = Field(default=False, description="Plan GPU power limits (needs the node agent).")
    # The profiler Job an EnergyProfile's spec.sweep asks for: its image and the ServiceAccount it runs as (in the
    # profile's namespace; it needs patch on energyprofiles/status and, for power limits, on its own pod).
    profiler_image: str = Field(default=f"ghcr.io/wattkeeper/runtime:{__version__}")
    profiler_service_account: str = Field(default="wattkeeper-profiler")
    # Faults and scale.
    reconcile_workers: int = Field(default=8, ge=1, le=64, description="Services reconciled at once in a pass.")
    request_timeout_seconds: float = Field(default=15.0, gt=0, description="Timeout of each API request.")
    peering_lifetime_seconds: int = Field(
        default=10, ge=2, le=300,
        description="kopf peering lifetime: a peer silent this long is dead and the standby takes over.")
    leadership_check_seconds: float = Field(
        default=2.0, gt=0, description="How often the control loop checks whether this instance is active.")
    liveness_intervals: float = Field(
        default=5.0, gt=1, description="Unhealthy when the control loop has not finished a pass in this many "
                                       "intervals (at least a minute).")
    error_backoff_max_seconds: float = Field(default=30.0, gt=0, description="Cap of the loop's backoff on errors.")
