"""GPU access behind an interface: the real NVML (nvidia-ml-py) and a fake for tests and GPU-less machines.

Read-only on purpose: nothing here sets clocks or power limits; the exporter only observes.
Units follow NVML: milliwatts, millijoules (since the driver loaded), bytes, percent.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuMemory:
    used_bytes: int
    total_bytes: int


class GpuDevices(ABC):
    """The GPUs of one node (or one pod), indexed 0..count-1."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def name(self, index: int) -> str: ...

    @abstractmethod
    def uuid(self, index: int) -> str: ...

    @abstractmethod
    def power_milliwatts(self, index: int) -> int: ...

    @abstractmethod
    def total_energy_millijoules(self, index: int) -> int:
        """The driver's energy counter: millijoules since the driver was loaded (resets on reload)."""

    @abstractmethod
    def utilisation_percent(self, index: int) -> int: ...

    @abstractmethod
    def memory(self, index: int) -> GpuMemory: ...

    @abstractmethod
    def power_limit_milliwatts(self, index: int) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most devices hold nothing
        """Release the library handle."""


class NvmlGpuDevices(GpuDevices):
    """The real GPUs through pynvml (package nvidia-ml-py)."""

    def __init__(self) -> None:
        import pynvml  # imported here so that the fake works where the NVML library is absent

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def count(self) -> int:
        return len(self._handles)

    def name(self, index: int) -> str:
        value = self._nvml.nvmlDeviceGetName(self._handles[index])
        return value.decode() if isinstance(value, bytes) else str(value)

    def uuid(self, index: int) -> str:
        value = self._nvml.nvmlDeviceGetUUID(self._handles[index])
        return value.decode() if isinstance(value, bytes) else str(value)

    def power_milliwatts(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetPowerUsage(self._handles[index]))

    def total_energy_millijoules(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[index]))

    def utilisation_percent(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetUtilizationRates(self._handles[index]).gpu)

    def memory(self, index: int) -> GpuMemory:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handles[index])
        return GpuMemory(used_bytes=int(info.used), total_bytes=int(info.total))

    def power_limit_milliwatts(self, index: int) -> int:
        # The enforced limit (what the card obeys now), not the default or the maximum.
        return int(self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handles[index]))

    def close(self) -> None:
        self._nvml.nvmlShutdown()


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    power_milliwatts: int = 75_000
    energy_millijoules: int = 0
    utilisation_percent: int = 0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 80 * 1024**3
    power_limit_milliwatts: int = 700_000
    lost: bool = False  # fallen off the bus: every reading fails, as NVML_ERROR_GPU_IS_LOST does
    energy_supported: bool = True  # False: the energy counter answers NVML_ERROR_NOT_SUPPORTED


class FakeNvmlError(RuntimeError):
    """What the fake raises where pynvml would raise an NVMLError."""


class FakeGpuDevices(GpuDevices):
    """Scriptable GPUs: tests set power and energy; `advance` integrates power over time like the driver does."""

    def __init__(self, count: int = 1, name: str = "NVIDIA H100 80GB HBM3") -> None:
        self.gpus = [FakeGpu(name=name, uuid=f"GPU-fake0000-0000-0000-0000-{i:012d}") for i in range(count)]
        self._lock = threading.Lock()

    def count(self) -> int:
        return len(self.gpus)

    def _gpu(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        if gpu.lost:
            raise FakeNvmlError("GPU is lost")
        return gpu

    def name(self, index: int) -> str:
        return self._gpu(index).name

    def uuid(self, index: int) -> str:
        return self._gpu(index).uuid

    def power_milliwatts(self, index: int) -> int:
        return self._gpu(index).power_milliwatts

    def total_energy_millijoules(self, index: int) -> int:
        gpu = self._gpu(index)
        if not gpu.energy_supported:
            raise FakeNvmlError("Not Supported")
        return gpu.energy_millijoules

    def utilisation_percent(self, index: int) -> int:
        return self._gpu(index).utilisation_percent

    def memory(self, index: int) -> GpuMemory:
        gpu = self._gpu(index)
        return GpuMemory(used_bytes=gpu.memory_used_bytes, total_bytes=gpu.memory_total_bytes)

    def power_limit_milliwatts(self, index: int) -> int:
        return self._gpu(index).power_limit_milliwatts

    def advance(self, seconds: float) -> None:
        """Let time pass: each GPU's energy counter grows by its power times `seconds`."""
        with self._lock:
            for gpu in self.gpus:
                gpu.energy_millijoules += round(gpu.power_milliwatts * seconds)

    def reload_driver(self) -> None:
        """What a driver reload does to the energy counter: it starts again from zero."""
        with self._lock:
            for gpu in self.gpus:
                gpu.energy_millijoules = 0
