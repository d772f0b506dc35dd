"""The NVML exporter's collector, driven by fake GPUs; the pod-resources decoding."""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry, generate_latest
from wattkeeper_runtime.exporter import EnergyCounter, GpuCollector
from wattkeeper_runtime.nvml import FakeGpuDevices
from wattkeeper_runtime.podresources import PodRef, decode_list_response, sidecar_mapper


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(metric name, gpu label) -> value."""
    values: dict[tuple[str, str], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            values[(sample.name, sample.labels.get("gpu", ""))] = sample.value
    return values


def make(count: int = 2) -> tuple[FakeGpuDevices, CollectorRegistry]:
    devices = FakeGpuDevices(count)
    registry = CollectorRegistry()
    registry.register(GpuCollector(devices, sidecar_mapper({"POD_NAMESPACE": "ns", "POD_NAME": "p-0"})))
    return devices, registry


def test_metric_names_units_and_labels() -> None:
    devices, registry = make(2)
    devices.gpus[1].power_milliwatts = 512_500
    devices.gpus[1].utilisation_percent = 87
    devices.gpus[1].memory_used_bytes = 70 * 2**30
    devices.gpus[1].power_limit_milliwatts = 500_000
    values = scrape(registry)
    assert values[("wattkeeper_gpu_power_watts", "1")] == 512.5
    assert values[("wattkeeper_gpu_utilization_ratio", "1")] == 0.87
    assert values[("wattkeeper_gpu_memory_used_bytes", "1")] == 70 * 2**30
    assert values[("wattkeeper_gpu_memory_total_bytes", "1")] == 80 * 2**30
    assert values[("wattkeeper_gpu_power_limit_watts", "1")] == 500.0
    assert ("wattkeeper_gpu_energy_joules_total", "0") in values
    text = generate_latest(registry).decode()
    assert "# TYPE wattkeeper_gpu_energy_joules_total counter" in text
    assert 'namespace="ns"' in text and 'pod="p-0"' in text and 'model="NVIDIA H100 80GB HBM3"' in text
    assert f'uuid="{devices.gpus[0].uuid}"' in text


def test_energy_follows_driver_counter_and_survives_reset() -> None:
    devices, registry = make(1)
    devices.gpus[0].power_milliwatts = 400_000
    devices.advance(10.0)  # 4000 J since the driver loaded
    assert scrape(registry)[("wattkeeper_gpu_energy_joules_total", "0")] == 4000.0
    devices.advance(5.0)
    assert scrape(registry)[("wattkeeper_gpu_energy_joules_total", "0")] == 6000.0
    devices.reload_driver()  # the driver's counter starts again from zero
    devices.advance(1.0)  # 400 J after the reload
    assert scrape(registry)[("wattkeeper_gpu_energy_joules_total", "0")] == 6400.0
    devices.advance(1.0)
    assert scrape(registry)[("wattkeeper_gpu_energy_joules_total", "0")] == 6800.0


def test_energy_counter_is_monotonic() -> None:
    counter = EnergyCounter()
    readings = [1000, 1500, 1500, 200, 900, 50, 60]
    totals = [counter.update(r) for r in readings]
    assert totals == [1000, 1500, 1500, 1700, 2400, 2450, 2460]
    assert all(b >= a for a, b in itertools.pairwise(totals))


def test_no_mapper_means_empty_pod_labels() -> None:
    devices = FakeGpuDevices(1)
    registry = CollectorRegistry()
    registry.register(GpuCollector(devices))
    text = generate_latest(registry).decode()
    assert 'pod=""' in text


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_decode_pod_resources_list_response() -> None:
    gpu_devices = _field(1, b"nvidia.com/gpu") + _field(2, b"GPU-aaa") + _field(2, b"GPU-bbb")
    other = _field(1, b"example.com/nic") + _field(2, b"nic0")
    container = _field(1, b"vllm") + _field(2, gpu_devices) + _field(2, other)
    pod = _field(1, b"llama-7d9f") + _field(2, b"team-a") + _field(3, container)
    response = _field(1, pod)
    owners = decode_list_response(response)
    assert owners == {
        "GPU-aaa": PodRef("team-a", "llama-7d9f", "vllm"),
        "GPU-bbb": PodRef("team-a", "llama-7d9f", "vllm"),
    }


# --- failures: each GPU and each reading on its own ------------------------------------------------------------


def series(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """gpu label -> value of one metric."""
    return {gpu: value for (metric, gpu), value in scrape(registry).items() if metric == name}


def test_a_lost_gpu_leaves_the_others_whole() -> None:
    devices, registry = make(3)
    for gpu, watts in zip(devices.gpus, (300_000, 400_000, 500_000), strict=True):
        gpu.power_milliwatts = watts
    devices.gpus[1].lost = True  # even its UUID read fails, as NVML_ERROR_GPU_IS_LOST does
    assert series(registry, "wattkeeper_gpu_power_watts") == {"0": 300.0, "2": 500.0}
    assert set(series(registry, "wattkeeper_gpu_energy_joules_total")) == {"0", "2"}
    assert set(series(registry, "wattkeeper_gpu_memory_used_bytes")) == {"0", "2"}
    before = series(registry, "wattkeeper_gpu_read_errors_total")
    after = series(registry, "wattkeeper_gpu_read_errors_total")
    assert before.keys() == {"1"} and after["1"] == before["1"] + 1  # one failed UUID read per scrape
    assert 'reading="uuid"' in generate_latest(registry).decode()
    devices.gpus[1].lost = False  # back (a reset): exported again
    assert series(registry, "wattkeeper_gpu_power_watts") == {"0": 300.0, "1": 400.0, "2": 500.0}


def test_a_gpu_without_energy_counter_still_reports_power() -> None:
    devices, registry = make(2)
    devices.gpus[0].power_milliwatts = 250_000
    devices.gpus[0].energy_supported = False  # NVML_ERROR_NOT_SUPPORTED
    devices.gpus[1].power_milliwatts = 350_000
    devices.advance(2.0)
    assert series(registry, "wattkeeper_gpu_power_watts") == {"0": 250.0, "1": 350.0}
    assert series(registry, "wattkeeper_gpu_energy_joules_total") == {"1": 700.0}
    assert series(registry, "wattkeeper_gpu_utilization_ratio").keys() == {"0", "1"}


def test_a_failing_reading_drops_only_that_series() -> None:
    class PowerlessGpus(FakeGpuDevices):
        def power_limit_milliwatts(self, index: int) -> int:
            raise RuntimeError("Not Supported")

    devices = PowerlessGpus(2)
    registry = CollectorRegistry()
    registry.register(GpuCollector(devices))
    assert series(registry, "wattkeeper_gpu_power_watts").keys() == {"0", "1"}
    assert series(registry, "wattkeeper_gpu_power_limit_watts") == {}


def test_a_failing_pod_mapper_keeps_the_power() -> None:
    def broken(_uuids: object) -> dict[str, PodRef]:
        raise RuntimeError("kubelet socket gone")

    devices = FakeGpuDevices(2)
    registry = CollectorRegistry()
    registry.register(GpuCollector(devices, broken))
    assert series(registry, "wattkeeper_gpu_power_watts").keys() == {"0", "1"}


def test_a_gpu_count_failure_is_an_empty_scrape_not_an_error() -> None:
    class NoDriver(FakeGpuDevices):
        def count(self) -> int:
            raise RuntimeError("Driver Not Loaded")

    registry = CollectorRegistry()
    registry.register(GpuCollector(NoDriver(1)))
    assert series(registry, "wattkeeper_gpu_power_watts") == {}
    assert "wattkeeper_gpu_read_errors_total" in generate_latest(registry).decode()


# --- time-sliced GPUs --------------------------------------------------------------------------------------------


def _pod(name: str, namespace: str, container: str, resource: bytes, *device_ids: bytes) -> bytes:
    devices = _field(1, resource) + b"".join(_field(2, d) for d in device_ids)
    return _field(1, _field(1, name.encode()) + _field(2, namespace.encode()) + _field(3, _field(1, container.encode()) + _field(2, devices)))


def test_time_sliced_device_ids_map_to_the_gpu_uuid() -> None:
    """`GPU-<uuid>::<n>` replicas (device plugin time-slicing) belong to the GPU `GPU-<uuid>`, as in dcgm-exporter;
    with two sharers the last listed holds the labels (one series per GPU, power never counted twice)."""
    response = _pod("a-0", "team-a", "vllm", b"nvidia.com/gpu", b"GPU-aaa::0") + _pod(
        "b-0", "team-b", "vllm", b"nvidia.com/gpu.shared", b"GPU-aaa::1", b"GPU-bbb::3"
    )
    owners = decode_list_response(response)
    assert owners["GPU-aaa::0"] == PodRef("team-a", "a-0", "vllm")
    assert owners["GPU-aaa"] == PodRef("team-b", "b-0", "vllm")
    assert owners["GPU-bbb"] == PodRef("team-b", "b-0", "vllm")

    devices = FakeGpuDevices(2)
    devices.gpus[0].uuid, devices.gpus[1].uuid = "GPU-aaa", "GPU-bbb"
    registry = CollectorRegistry()
    registry.register(GpuCollector(devices, lambda uuids: {u: owners[u] for u in uuids if u in owners}))
    text = generate_latest(registry).decode()
    power_lines = [line for line in text.splitlines() if line.startswith("wattkeeper_gpu_power_watts{")]
    assert len(power_lines) == 2 and all('pod="b-0"' in line for line in power_lines), power_lines
