"""Telemetry sources: one interface, Prometheus (PromQL over dcgm-exporter and vLLM) and direct pod scraping."""

from .base import ServiceObservation, TelemetrySource, TelemetryUnavailable
from .prometheus import PrometheusSource
from .scrape import DirectScrapeSource

__all__ = ["DirectScrapeSource", "PrometheusSource", "ServiceObservation", "TelemetrySource", "TelemetryUnavailable"]
