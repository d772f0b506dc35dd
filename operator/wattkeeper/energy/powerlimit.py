"""The GPU power limit as a lever: what a limit does to power and time, which limits to try, and how to read them.

The effect itself lives in the energy model's step (Evaluator.step in model.py): a limit below what the step would
draw clips the power to the limit and lowers clocks, which slows the compute-bound part of the step by
((P - idle) / (limit - idle)) ** (1 / POWER_CAP_EXPONENT) while HBM streaming keeps its pace. A limit above what
the step draws changes nothing: memory-bound decode at small batches often draws far below the board limit, and
there a cap is an illusion (Ma et al., "The Illusion of Power Capping in LLM Decode", arXiv 2605.11999: decode on
H200 drew 137-300 W of 700 W and no cap triggered). The exponent below is the one place this module sets the
model's physics; it is chosen so that the model reproduces the published measurements in PUBLISHED_CAP_EFFECTS
(tests/unit/test_powerlimit.py checks it).

Where measured EnergyProfile points exist at a limit (the profiler sweeps `gpuPowerLimitWatts`), the planner uses
them instead of this model (planner/measured.py), as for every other configuration.

For other components (coordinated through this docstring):
- the operator's switching rule (control/) reaches for the limit first under a cap, because it acts in seconds
  and restarts nothing: `planner.inplace.in_place_limit` gives the limit to set on the running configuration;
- the benchmark's simulator models a limit by the same Evaluator.step (with its ground-truth bias on top), and a
  limit change as an in-place change with `LIMIT_SETTLE_SECONDS` of delay and no restart;
- the node agent (wattkeeper_runtime.agent) clamps every request to [card minimum, card default]:
  `clamp_limit_watts` is the same rule on the planning side, so a plan never asks for what the agent would refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalog import Accelerator

# Fitted by hand to PUBLISHED_CAP_EFFECTS below with the calibrated model (LLaMA-65B-sized dense model, A100,
# TP4, batch 16-256, limit at 70% of the default): the model gives energy -23..-25% for +4..+8% time at 4.5,
# against -22..-24% for +6..+7% measured. The previous prior, 2.5, gave +9..+16% time for -19..-21% energy.
POWER_CAP_EXPONENT = 4.5

# How long a new limit takes to act: the driver applies it at once and the power controller settles within a
# couple of its 100 ms-scale control periods; one sampling second covers it (NVIDIA's power readings are 1 s
# averages on H100, see shared/data/README.md).
LIMIT_SETTLE_SECONDS = 1.0

# Fractions of the card's default limit the planner tries besides the default itself.
DEFAULT_LIMIT_FRACTIONS = (0.85, 0.7, 0.55)


@dataclass(frozen=True)
class PublishedCapEffect:
    source: str
    gpu: str
    default_watts: float
    limit_watts: float
    energy_change: tuple[float, float]  # relative, e.g. (-0.24, -0.22)
    time_change: tuple[float, float]


PUBLISHED_CAP_EFFECTS: tuple[PublishedCapEffect, ...] = (
    # Samsi et al., "From Words to Watts: Benchmarking the Energy Costs of Large Language Model Inference",
    # IEEE HPEC 2023, arXiv 2310.03003: LLaMA inference on A100, power cap 250 W -> 175 W: total energy about 23%
    # lower (22-24% across their runs) for 6-7% more inference time.
    PublishedCapEffect("Samsi et al. 2023 (arXiv 2310.03003)", "A100", 250.0, 175.0, (-0.24, -0.22), (0.06, 0.07)),
)
# Other published uses of the same lever, for the record: Zeus (You, Chung, Chowdhury, NSDI 2023) and Perseus
# (Chung et al., SOSP 2024) pick GPU power limits / frequencies per job and per pipeline stage; DynamoLLM
# (Stojkovic et al., HPCA 2025, arXiv 2408.00741) reconfigures GPU frequency with instances and TP under SLOs and
# reports 53% less energy on Azure traces; NVIDIA Dynamo's power agent sets limits per node.


def clamp_limit_watts(accelerator: Accelerator, watts: float | None) -> float | None:
    """A limit the node agent will apply as asked: within [card minimum, default]; None means the default."""
    if watts is None or not math.isfinite(watts) or watts >= accelerator.power_limit_watts:
        return None
    return max(float(watts), accelerator.min_power_limit_watts)


def limit_options_watts(
    accelerator: Accelerator, fractions: tuple[float, ...] = DEFAULT_LIMIT_FRACTIONS
) -> tuple[float | None, ...]:
    """The limits the planner tries: the default (None) and fractions of it, never below the card's minimum."""
    options: list[float | None] = [None]
    for fraction in fractions:
        watts = clamp_limit_watts(accelerator, round(accelerator.power_limit_watts * fraction))
        if watts is not None and watts not in options:
            options.append(watts)
    return tuple(options)
