"""The NVML exporter: per-GPU power, cumulative energy, utilisation, memory and power limit for Prometheus.

Metrics (labels gpu, uuid, model, namespace, pod, container):
  wattkeeper_gpu_power_watts             gauge    instantaneous board power (NVML's ~1 s average on H100)
  wattkeeper_gpu_energy_joules_total     counter  energy since this exporter started reading, never decreasing
  wattkeeper_gpu_utilization_ratio       gauge    0..1, share of the last sample period a kernel ran
  wattkeeper_gpu_memory_used_bytes       gauge
  wattkeeper_gpu_memory_total_bytes      gauge
  wattkeeper_gpu_power_limit_watts       gauge    the enforced power limit (read only; never set here)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .nvml import GpuDevices
from .podresources import PodMapper, PodRef

log = logging.getLogger(__name__)

LABELS = ("gpu", "uuid", "model", "namespace", "pod", "container")


class EnergyCounter:
    """A monotonic running total over the driver's millijoule counter, robust to counter resets.

    The driver's counter restarts from zero when the driver reloads (or, on old drivers, may wrap). A reading
    below the previous one therefore means "reset": the new reading is all energy since the reset, so it is
    added whole. The total starts at the first reading so that it equals the driver's figure until a reset.
    """

    def __init__(self) -> None:
        self._last_millijoules: int | None = None
        self.total_millijoules = 0

    def update(self, reading_millijoules: int) -> int:
        last = self._last_millijoules
        if last is None:
            self.total_millijoules = reading_millijoules
        elif reading_millijoules >= last:
            self.total_millijoules += reading_millijoules - last
        else:
            self.total_millijoules += reading_millijoules
        self._last_millijoules = reading_millijoules
        return self.total_millijoules


class GpuCollector(Collector):
    """A prometheus-client collector that reads the devices on every scrape."""

    def __init__(self, devices: GpuDevices, mapper: PodMapper | None = None) -> None:
        self._devices = devices
        self._mapper = mapper
        self._energy: dict[str, EnergyCounter] = {}
        self._lock = threading.Lock()  # scrapes may overlap; the energy counters must not interleave

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterable[Metric]:
        power = GaugeMetricFamily("wattkeeper_gpu_power_watts", "GPU board power draw in watts.", labels=LABELS)
        energy = CounterMetricFamily(
            "wattkeeper_gpu_energy_joules", "GPU energy in joules (driver counter, reset-safe).", labels=LABELS
        )
        util = GaugeMetricFamily(
            "wattkeeper_gpu_utilization_ratio", "Share of time a kernel was running (0 to 1).", labels=LABELS
        )
        used = GaugeMetricFamily("wattkeeper_gpu_memory_used_bytes", "GPU memory in use, bytes.", labels=LABELS)
        total = GaugeMetricFamily("wattkeeper_gpu_memory_total_bytes", "GPU memory in all, bytes.", labels=LABELS)
        limit = GaugeMetricFamily(
            "wattkeeper_gpu_power_limit_watts", "Enforced GPU power limit in watts.", labels=LABELS
        )
        devices = self._devices
        uuids = [devices.uuid(i) for i in range(devices.count())]
        owners = self._mapper(uuids) if self._mapper else {}
        for index, uuid in enumerate(uuids):
            try:
                owner = owners.get(uuid, PodRef())
                labels = [str(index), uuid, devices.name(index), owner.namespace, owner.pod, owner.container]
                counter = self._energy.setdefault(uuid, EnergyCounter())
                joules = counter.update(devices.total_energy_millijoules(index)) / 1000.0
                memory = devices.memory(index)
                power.add_metric(labels, devices.power_milliwatts(index) / 1000.0)
                energy.add_metric(labels, joules)
                util.add_metric(labels, devices.utilisation_percent(index) / 100.0)
                used.add_metric(labels, float(memory.used_bytes))
                total.add_metric(labels, float(memory.total_bytes))
                limit.add_metric(labels, devices.power_limit_milliwatts(index) / 1000.0)
            except Exception as error:  # one failing GPU (fallen off the bus) must not hide the others
                log.warning("reading GPU %d (%s) failed: %s", index, uuid, error)
        return [power, energy, util, used, total, limit]


def serve_exporter(devices: GpuDevices, mapper: PodMapper | None, port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` until interrupted."""
    registry = CollectorRegistry()
    registry.register(GpuCollector(devices, mapper))
    start_http_server(port, addr=address, registry=registry)
    log.info("NVML exporter: %d GPU(s), metrics on http://%s:%d/metrics", devices.count(), address, port)
    try:
        while True:
            time.sleep(3600)
    finally:
        devices.close()
