"""Setting GPU power limits: the one place in Wattkeeper that writes to a GPU (the node agent uses it).

NVML's power-limit calls, as nvidia-ml-py 13.615.71 wraps them (pynvml.py; NVML API reference, "Device Commands"):
- nvmlDeviceGetPowerManagementLimitConstraints(handle) -> [min, max] milliwatts (pynvml.py:3937)
- nvmlDeviceGetPowerManagementDefaultLimit(handle) -> milliwatts, the limit the card boots with (pynvml.py:3946)
- nvmlDeviceGetPowerManagementLimit(handle) -> milliwatts, the limit set now (pynvml.py:3929)
- nvmlDeviceSetPowerManagementLimit(handle, milliwatts) (pynvml.py:4515). NVML: "Requires root/admin
  permissions"; the value must lie within the constraints (NVML_ERROR_INVALID_ARGUMENT otherwise); the limit does
  not survive a driver reload or reboot (it falls back to the default, which is the safe side).
Units follow NVML: milliwatts.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class PowerLimitError(RuntimeError):
    """NVML refused or failed a power-limit call."""


@dataclass(frozen=True)
class LimitConstraints:
    min_milliwatts: int
    max_milliwatts: int
    default_milliwatts: int

    def clamp(self, milliwatts: int) -> int:
        """Within the card's range and never above its default: the agent only ever lowers power."""
        upper = min(self.max_milliwatts, self.default_milliwatts)
        return max(self.min_milliwatts, min(int(milliwatts), upper))


class PowerLimitControl(ABC):
    """The GPUs of one node, indexed 0..count-1, with their power limits."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def uuid(self, index: int) -> str: ...

    @abstractmethod
    def constraints(self, index: int) -> LimitConstraints: ...

    @abstractmethod
    def limit_milliwatts(self, index: int) -> int: ...

    @abstractmethod
    def set_limit_milliwatts(self, index: int, milliwatts: int) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the library handle."""


class NvmlPowerLimitControl(PowerLimitControl):
    """The real GPUs through pynvml. Needs root in the container (see the chart's agent DaemonSet)."""

    def __init__(self) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, name)(*args)
        except self._nvml.NVMLError as error:
            raise PowerLimitError(f"{name}: {error}") from error

    def count(self) -> int:
        return len(self._handles)

    def uuid(self, index: int) -> str:
        value = self._call("nvmlDeviceGetUUID", self._handles[index])
        return value.decode() if isinstance(value, bytes) else str(value)

    def constraints(self, index: int) -> LimitConstraints:
        low, high = self._call("nvmlDeviceGetPowerManagementLimitConstraints", self._handles[index])
        default = self._call("nvmlDeviceGetPowerManagementDefaultLimit", self._handles[index])
        return LimitConstraints(int(low), int(high), int(default))

    def limit_milliwatts(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetPowerManagementLimit", self._handles[index]))

    def set_limit_milliwatts(self, index: int, milliwatts: int) -> None:
        self._call("nvmlDeviceSetPowerManagementLimit", self._handles[index], int(milliwatts))

    def close(self) -> None:
        self._nvml.nvmlShutdown()


@dataclass
class FakeLimitGpu:
    uuid: str
    min_milliwatts: int = 200_000
    max_milliwatts: int = 700_000
    default_milliwatts: int = 700_000
    limit_milliwatts: int = 700_000
    fail_set: bool = False  # scripted NVML failure on set


@dataclass
class FakePowerLimitControl(PowerLimitControl):
    """Scriptable GPUs that keep their limit like a card does (across agent restarts, not driver reloads)."""

    gpus: list[FakeLimitGpu] = field(default_factory=list)
    sets: list[tuple[str, int]] = field(default_factory=list)  # every successful set, in order
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def h100s(cls, count: int) -> FakePowerLimitControl:
        return cls([FakeLimitGpu(uuid=f"GPU-fake0000-0000-0000-0000-{i:012d}") for i in range(count)])

    def count(self) -> int:
        return len(self.gpus)

    def uuid(self, index: int) -> str:
        return self.gpus[index].uuid

    def constraints(self, index: int) -> LimitConstraints:
        g = self.gpus[index]
        return LimitConstraints(g.min_milliwatts, g.max_milliwatts, g.default_milliwatts)

    def limit_milliwatts(self, index: int) -> int:
        return self.gpus[index].limit_milliwatts

    def set_limit_milliwatts(self, index: int, milliwatts: int) -> None:
        g = self.gpus[index]
        with self._lock:
            if g.fail_set:
                raise PowerLimitError("nvmlDeviceSetPowerManagementLimit: Insufficient Permissions (fake)")
            if not g.min_milliwatts <= milliwatts <= g.max_milliwatts:  # what NVML answers: Invalid Argument
                raise PowerLimitError(f"nvmlDeviceSetPowerManagementLimit: Invalid Argument ({milliwatts} mW)")
            g.limit_milliwatts = int(milliwatts)
            self.sets.append((g.uuid, int(milliwatts)))
