#!/usr/bin/env python3
"""Read-only check of a real GPU for the power-limit lever and the profiler: run it where a GPU is lent.

It READS, through nvidia-ml-py (pynvml), what the agent and the profiler rely on, and changes nothing on the card
(no nvmlDeviceSet* call anywhere in this file):
- power (nvmlDeviceGetPowerUsage, mW) and the energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ) twice, a
  few seconds apart, to show the counter advancing at about the reported power;
- the power-limit constraints, default, current and enforced limits
  (nvmlDeviceGetPowerManagementLimitConstraints / DefaultLimit / Limit / nvmlDeviceGetEnforcedPowerLimit, mW);
- the model, driver and NVML versions (the profiler's provenance);
- the agent's planning-side rule on this card: the limits the planner would offer (wattkeeper.energy.powerlimit)
  against the card's own range.
Prints one JSON document. Usage: `.venv/bin/python hack/gpu-check.py [--seconds 5]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    import pynvml

    pynvml.nvmlInit()
    report: dict[str, Any] = {"driver": _text(pynvml.nvmlSystemGetDriverVersion()),
                              "nvml": _text(pynvml.nvmlSystemGetNVMLVersion()), "gpus": []}
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    first = []
    for handle in handles:
        first.append((time.monotonic(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
    time.sleep(options.seconds)
    for index, handle in enumerate(handles):
        t1, e1 = time.monotonic(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        t0, e0 = first[index]
        low, high = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        gpu: dict[str, Any] = {
            "index": index,
            "name": _text(pynvml.nvmlDeviceGetName(handle)),
            "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
            "power_watts": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            "energy_counter_millijoules": e1,
            "energy_counter_watts_over_window": (e1 - e0) / 1000 / (t1 - t0),
            "limit_min_watts": low / 1000,
            "limit_max_watts": high / 1000,
            "limit_default_watts": pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000,
            "limit_current_watts": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
            "limit_enforced_watts": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        }
        try:
            from wattkeeper.energy.catalog import get_accelerator
            from wattkeeper.energy.powerlimit import limit_options_watts

            name = gpu["name"].upper()
            kind = next((k for k in ("H200", "H100", "B200", "A100", "L40S") if k in name), None)
            if kind:
                acc = get_accelerator(kind)
                offered = [w for w in limit_options_watts(acc) if w is not None]
                gpu["catalog"] = {"type": kind, "default_watts": acc.power_limit_watts,
                                  "min_watts": acc.min_power_limit_watts, "planner_offers_watts": offered,
                                  "all_offers_within_card": all(gpu["limit_min_watts"] <= w <= gpu["limit_default_watts"]
                                                                for w in offered)}
        except ImportError:
            pass
        report["gpus"].append(gpu)
    pynvml.nvmlShutdown()
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
