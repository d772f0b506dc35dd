"""The NVML exporter: per-GPU power, cumulative energy, utilisation, memory and power limit for Prometheus.

Metrics (labels gpu, uuid, model, namespace, pod, container):
  wattkeeper_gpu_power_watts             gauge    instantaneous board power (NVML's ~1 s average on H100)
  wattkeeper_gpu_energy_joules_total     counter  energy since this exporter started reading, never decreasing
  wattkeeper_gpu_utilization_ratio       gauge    0..1, share of the last sample period a kernel ran
  wattkeeper_gpu_memory_used_bytes       gauge
  wattkeeper_gpu_memory_total_bytes      gauge
  wattkeeper_gpu_power_limit_watts       gauge    the enforced power limit (read only; never set here)
  wattkeeper_gpu_read_errors_total       counter  failed readings (labels gpu, reading), since start

Failures stay per GPU and per reading: a GPU that fell off the bus (its UUID cannot even be read) is left out of
the scrape while the others are exported in full; a GPU without an energy counter (NVML_ERROR_NOT_SUPPORTED on
pre-Volta boards and some vGPU profiles) still exports its power and the rest, only the energy series is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .nvml import GpuDevices
from .podresources import PodMapper, PodRef

log = logging.getLogger(__name__)

LABELS = ("gpu", "uuid", "model", "namespace", "pod", "container")
T = TypeVar("T")


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
        self._errors: dict[tuple[int, str], int] = {}  # (gpu index or -1, reading) -> failures
        self._failing: set[tuple[int, str]] = set()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _read(self, index: int, reading: str, read: Callable[[], T]) -> T | None:
        """One NVML reading; a failure is logged (once per GPU and reading until it recovers) and counted."""
        key = (index, reading)
        try:
            value = read()
        except Exception as error:  # NVMLError_GpuIsLost, NVMLError_NotSupported, a driver hiccup
            self._errors[key] = self._errors.get(key, 0) + 1
            if key not in self._failing:
                self._failing.add(key)
                log.warning("reading %s of GPU %d failed: %s", reading, index, error)
            return None
        if key in self._failing:
            self._failing.discard(key)
            log.info("reading %s of GPU %d works again", reading, index)
        return value

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
        errors = CounterMetricFamily(
            "wattkeeper_gpu_read_errors", "Failed NVML readings since the exporter started.", labels=["gpu", "reading"]
        )
        devices = self._devices
        count = self._read(-1, "count", devices.count) or 0
        # Identity first, inside the per-GPU guard: a lost GPU fails here and only it is left out.
        identities: list[tuple[int, str, str]] = []
        for index in range(count):
            uuid = self._read(index, "uuid", partial(devices.uuid, index))
            name = self._read(index, "name", partial(devices.name, index)) if uuid is not None else None
            if uuid is not None and name is not None:
                identities.append((index, uuid, name))
        owners: dict[str, PodRef] = {}
        if self._mapper is not None:
            try:
                owners = self._mapper([uuid for _, uuid, _ in identities])
            except Exception as error:  # the mapper guards itself; a bug there must still not cost the power
                log.warning("mapping GPUs to pods failed: %s", error)
        for index, uuid, name in identities:
            owner = owners.get(uuid, PodRef())
            labels = [str(index), uuid, name, owner.namespace, owner.pod, owner.container]
            milliwatts = self._read(index, "power", partial(devices.power_milliwatts, index))
            if milliwatts is not None:
                power.add_metric(labels, milliwatts / 1000.0)
            millijoules = self._read(index, "energy", partial(devices.total_energy_millijoules, index))
            if millijoules is not None:
                counter = self._energy.setdefault(uuid, EnergyCounter())
                energy.add_metric(labels, counter.update(millijoules) / 1000.0)
            percent = self._read(index, "utilization", partial(devices.utilisation_percent, index))
            if percent is not None:
                util.add_metric(labels, percent / 100.0)
            memory = self._read(index, "memory", partial(devices.memory, index))
            if memory is not None:
                used.add_metric(labels, float(memory.used_bytes))
                total.add_metric(labels, float(memory.total_bytes))
            limit_mw = self._read(index, "power_limit", partial(devices.power_limit_milliwatts, index))
            if limit_mw is not None:
                limit.add_metric(labels, limit_mw / 1000.0)
        for (index, reading), failures in sorted(self._errors.items()):
            errors.add_metric([str(index) if index >= 0 else "", reading], float(failures))
        return [power, energy, util, used, total, limit, errors]


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
