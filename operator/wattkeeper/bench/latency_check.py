"""Predicted under-load latency percentiles against short `BatchingEngine` runs (not the benchmark's trace).

`python -m wattkeeper.bench.latency_check` replays 400 s of Poisson arrivals with log-normal token counts
(sigma 1) through one engine on the energy model's own step timing, for a few 70B and 8B configurations at 10-85%
of their capacity, and prints measured and predicted ITL p95 and TTFT p95 with the mean (absolute) log error.
This is the check behind `_ITL_TAIL_SCALE` and `_TTFT_TAIL_PROMPTS` in energy/model.py.
"""

from __future__ import annotations

import math

import numpy as np
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest

from ..energy.catalog import get_accelerator, model_from_name
from ..energy.model import EnergyModel
from ..energy.types import ModelShape, ServingConfig, Workload
from .groundtruth import GroundTruth
from .trace import synthetic_trace


def replay(
    model: ModelShape, config: ServingConfig, rate: float, inp: int, out: int, duration_s: float = 400.0
) -> tuple[float, float]:
    """(ITL p95 over every token gap, TTFT p95) of one engine replica on the model's timing."""
    em = EnergyModel.default()
    gt = GroundTruth(model, get_accelerator("H100"), em, ())
    trace = synthetic_trace([(duration_s, rate)], inp, out, seed=3, spread=1.0)
    engine = BatchingEngine(gt.timing(config), config.max_num_seqs, config.max_num_batched_tokens)
    gaps: list[float] = []
    ttft: list[float] = []
    for i, (t, a, b) in enumerate(zip(trace.arrival_s, trace.input_tokens, trace.output_tokens, strict=True)):
        while engine.has_work() and engine.clock_s < t:
            r = engine.step(engine.clock_s)
            gaps += r.itl_samples_s
            ttft += r.ttft_samples_s
        engine.submit(EngineRequest(str(i), int(a), int(b)), float(t))
    while engine.has_work():
        r = engine.step(engine.clock_s)
        gaps += r.itl_samples_s
        ttft += r.ttft_samples_s
    return float(np.percentile(gaps, 95)), float(np.percentile(ttft, 95))


def main() -> None:
    em = EnergyModel.default()
    acc = get_accelerator("H100")
    m70 = model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0)
    m8 = model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0)
    cases = [
        (m70, ServingConfig("bf16", 4, 256, 8192)),
        (m70, ServingConfig("fp8", 2, 128, 8192)),
        (m70, ServingConfig("fp8", 4, 256, 2048)),
        (m8, ServingConfig("bf16", 1, 256, 8192)),
    ]
    itl_err: list[float] = []
    ttft_err: list[float] = []
    for model, config in cases:
        for inp, out in ((1000, 200), (400, 400)):
            capacity = 1.0 / em.predict(model, acc, config, Workload(1.0, inp, out)).utilisation
            for share in (0.1, 0.3, 0.5, 0.7, 0.85):
                rate = share * capacity
                p = em.predict(model, acc, config, Workload(rate, inp, out))
                itl, ttft = replay(model, config, rate, inp, out)
                itl_err.append(math.log(p.itl_p95_seconds / itl))
                ttft_err.append(math.log(p.ttft_p95_seconds / ttft))
                print(
                    f"{model.name} {config.short()} {inp}/{out} {rate:5.2f} req/s ({share:.0%}): ITL p95 "
                    f"{itl * 1e3:.0f} ms measured, {p.itl_p95_seconds * 1e3:.0f} predicted; TTFT p95 {ttft:.2f} s "
                    f"measured, {p.ttft_p95_seconds:.2f} predicted"
                )
    for name, e in (("ITL p95", np.array(itl_err)), ("TTFT p95", np.array(ttft_err))):
        print(f"{name}: mean log error {e.mean():+.3f}, mean absolute {np.abs(e).mean():.3f}")


if __name__ == "__main__":
    main()
