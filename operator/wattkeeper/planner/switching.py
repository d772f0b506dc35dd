"""When to move from the running plan: only when the saving over a horizon beats the cost of moving.

A change of any vLLM argument (precision, TP, max-num-seqs, ...) restarts every replica: each new replica loads
the weights and captures CUDA graphs at about idle power, and while a replica rolls its share of the traffic is
carried by the rest less efficiently (counted as that replica's power spent without serving). Adding replicas with
the same configuration only pays their load time; removing replicas is free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..energy.catalog import Accelerator, get_precision
from ..energy.types import ModelShape
from .search import Candidate

# Reading weights from a node-local cache and starting vLLM (CUDA graph capture, warm-up) on a recent GPU node.
LOAD_BYTES_PER_SECOND_PER_GPU = 2.0e9
ENGINE_STARTUP_SECONDS = 45.0


@dataclass(frozen=True)
class SwitchDecision:
    switch: bool
    reason: str
    saving_joules: float
    cost_joules: float


def model_load_seconds(model: ModelShape, accelerator: Accelerator, precision: str, tensor_parallel: int) -> float:
    """Seconds from pod start to serving: weights read in parallel by the TP GPUs, plus engine start-up."""
    weights_bytes = model.total_params_b * 1e9 * get_precision(precision).weight_bytes_per_param
    del accelerator  # start-up is dominated by storage and host, not by the GPU model
    return weights_bytes / (LOAD_BYTES_PER_SECOND_PER_GPU * max(tensor_parallel, 1)) + ENGINE_STARTUP_SECONDS


def change_cost_joules(
    current: Candidate, proposed: Candidate, model: ModelShape, accelerator: Accelerator
) -> tuple[float, str]:
    load_s = model_load_seconds(model, accelerator, proposed.config.precision, proposed.config.tensor_parallel)
    idle_per_replica = accelerator.idle_watts * proposed.config.tensor_parallel
    # The GPU power limit is applied in place by the node agent (nvmlDeviceSetPowerManagementLimit on the running
    # process): a change of it alone, or with replicas, restarts nothing.
    if replace(proposed.config, gpu_power_limit_watts=None) == replace(current.config, gpu_power_limit_watts=None):
        added = max(proposed.replicas - current.replicas, 0)
        return added * idle_per_replica * load_s, f"{added} replica(s) added, no restart"
    kind = (
        "reload"
        if (
            proposed.config.precision != current.config.precision
            or proposed.config.tensor_parallel != current.config.tensor_parallel
        )
        else "restart"
    )
    loading = proposed.replicas * idle_per_replica * load_s
    per_replica_watts = current.total_watts / max(current.replicas, 1)
    lost_capacity = min(current.replicas, proposed.replicas) * per_replica_watts * load_s
    return loading + lost_capacity, f"rolling {kind} of {proposed.replicas} replica(s), {load_s:.0f} s each"


def watts_at_served_load(current: Candidate, proposed: Candidate) -> tuple[float, float]:
    """Both plans' watts at one served load, the larger of the two: a plan that cannot carry the load draws
    less only because it serves less (the rest queues), which is no saving. Each plan's joules per served token
    times that load; equal to their watts when both carry the load."""
    def served(c: Candidate) -> float:
        return max(c.prediction.output_tokens_per_second * c.replicas, 1e-9)

    load = max(served(current), served(proposed))
    return current.total_watts / served(current) * load, proposed.total_watts / served(proposed) * load


def should_switch(
    current: Candidate | None,
    proposed: Candidate,
    horizon_seconds: float,
    model: ModelShape,
    accelerator: Accelerator,
    min_relative_saving: float = 0.03,
) -> SwitchDecision:
    """Switch when the proposal saves more energy over the horizon than the change costs (with hysteresis)."""
    if current is None:
        return SwitchDecision(True, "nothing is running yet", 0.0, 0.0)
    if proposed.config == current.config and proposed.replicas == current.replicas:
        return SwitchDecision(False, "the proposal is the running plan", 0.0, 0.0)
    cost, how = change_cost_joules(current, proposed, model, accelerator)
    current_watts, proposed_watts = watts_at_served_load(current, proposed)
    saving = (current_watts - proposed_watts) * horizon_seconds
    if not current.meets_slo and proposed.meets_slo:
        return SwitchDecision(True, f"the running plan misses its SLO; {how}", saving, cost)
    if current.feasible and not proposed.feasible:
        return SwitchDecision(False, "the proposal is not feasible while the running plan is", saving, cost)
    if not current.within_power and proposed.within_power:
        return SwitchDecision(True, f"the running plan exceeds its power allocation; {how}", saving, cost)
    relative = (current_watts - proposed_watts) / max(current_watts, 1e-9)
    if relative < min_relative_saving:
        return SwitchDecision(
            False,
            f"saving {relative * 100:.1f}% is under the {min_relative_saving * 100:.0f}% hysteresis",
            saving,
            cost,
        )
    if saving <= cost:
        return SwitchDecision(
            False,
            f"saving {saving / 3.6e6:.3f} kWh over {horizon_seconds:.0f} s does not beat the cost "
            f"{cost / 3.6e6:.3f} kWh ({how})",
            saving,
            cost,
        )
    return SwitchDecision(
        True,
        f"saves {saving / 3.6e6:.3f} kWh over {horizon_seconds:.0f} s against a cost of {cost / 3.6e6:.3f} kWh ({how})",
        saving,
        cost,
    )
