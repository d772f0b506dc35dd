"""The operator's own Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def set_if_changed(gauge: Gauge, value: float) -> None:
    """Set a gauge only when its value moved. Each idle pass sets one gauge per service to a float parsed from that
    pass's LIST; replacing it every pass left one live float among each pass's garbage, and such survivors keep
    the allocator's pages from going back to the OS (issue 14: idle RSS followed the peak)."""
    if gauge._value.get() != value:  # prometheus_client has no public getter of a sample
        gauge.set(value)


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconciles = Counter("wattkeeper_reconciles_total", "Reconciles by kind and trigger",
                                  ["kind", "trigger"], registry=r)
        self.errors = Counter("wattkeeper_reconcile_errors_total", "Reconciles that failed", ["kind"], registry=r)
        self.decisions = Counter("wattkeeper_decisions_total", "Control-loop decisions by action", ["action"],
                                 registry=r)
        self.api_writes = Counter("wattkeeper_api_writes_total", "Writes to the API server by verb and kind",
                                  ["verb", "kind"], registry=r)
        self.predicted_watts = Gauge("wattkeeper_service_predicted_watts", "Predicted GPU power of a service",
                                     ["namespace", "service"], registry=r)
        self.measured_watts = Gauge("wattkeeper_service_measured_watts", "Measured GPU power of a service",
                                    ["namespace", "service"], registry=r)
        self.budget_watts = Gauge("wattkeeper_budget_measured_watts", "Measured GPU power under a budget",
                                  ["namespace", "budget"], registry=r)
        self.budget_limit_watts = Gauge("wattkeeper_budget_limit_watts", "Power limit of a budget",
                                        ["namespace", "budget"], registry=r)
        self.loop_passes = Counter("wattkeeper_loop_passes_total", "Control-loop passes finished, by outcome",
                                   ["outcome"], registry=r)
        self.loop_pass_seconds = Gauge("wattkeeper_loop_pass_seconds", "Duration of the last control-loop pass",
                                       registry=r)
        self.loop_heartbeat = Gauge("wattkeeper_loop_heartbeat_timestamp_seconds",
                                    "When the control loop last finished a pass (or a standby's check)", registry=r)
        self.plan_seconds = Histogram("wattkeeper_plan_seconds", "Time to plan one service", registry=r,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
