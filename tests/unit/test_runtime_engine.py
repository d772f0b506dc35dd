"""BatchingEngine: limits, latencies and energy on a virtual clock, with a deterministic stub and the real model."""

from __future__ import annotations

import pytest
from wattkeeper_runtime.engine import BatchingEngine, EngineRequest, StepResult, run_to_completion
from wattkeeper_runtime.timing import LinearStubTiming, SimSpec, make_timing


def requests(n: int, prompt: int = 100, output: int = 20) -> list[EngineRequest]:
    return [EngineRequest(f"r{i}", prompt_tokens=prompt, max_output_tokens=output) for i in range(n)]


def test_max_num_seqs_is_respected() -> None:
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=4, max_num_batched_tokens=100_000)
    for r in requests(10):
        engine.submit(r, 0.0)
    results = run_to_completion(engine)
    assert max(r.running for r in results) == 4
    assert engine.finished_total == 10
    assert engine.generation_tokens_total == 10 * 20
    assert engine.prompt_tokens_total == 10 * 100


def test_token_budget_chunks_long_prompts() -> None:
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=64, max_num_batched_tokens=256)
    for r in requests(3, prompt=600, output=5):
        engine.submit(r, 0.0)
    results = run_to_completion(engine)
    assert all(r.prefill_tokens + r.decode_sequences <= 256 for r in results)
    assert results[0].prefill_tokens == 256 and not results[0].emitted  # a chunk: no token yet
    assert engine.prompt_tokens_total == 1800
    assert engine.finished_total == 3


def test_ttft_and_itl_follow_the_virtual_clock() -> None:
    timing = LinearStubTiming()
    engine = BatchingEngine(timing, max_num_seqs=8, max_num_batched_tokens=8192)
    request = EngineRequest("one", prompt_tokens=1000, max_output_tokens=4)
    engine.submit(request, 5.0)
    results = run_to_completion(engine)
    assert results[0].start_s == 5.0
    assert results[0].ttft_samples_s == [pytest.approx(timing.prefill_seconds(1000))]
    itls = [s for r in results for s in r.itl_samples_s]
    assert len(itls) == 3
    assert itls[0] == pytest.approx(timing.decode_step_seconds(1, 1001))
    assert request.finished_s == pytest.approx(results[-1].end_s)


def test_decoding_requests_go_first_and_new_ones_join_running_batch() -> None:
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=8, max_num_batched_tokens=8192)
    first = EngineRequest("a", prompt_tokens=10, max_output_tokens=50)
    engine.submit(first, 0.0)
    engine.step(0.0)
    engine.step(engine.clock_s)
    late = EngineRequest("b", prompt_tokens=10, max_output_tokens=5)
    engine.submit(late, engine.clock_s)
    result = engine.step(engine.clock_s)
    assert result.decode_sequences == 1 and result.prefill_tokens == 10 and result.running == 2


def steady_state(max_num_seqs: int) -> tuple[float, float]:
    """Mean step seconds and watts of a full batch."""
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=max_num_seqs, max_num_batched_tokens=1_000_000)
    for r in requests(max_num_seqs, prompt=50, output=30):
        engine.submit(r, 0.0)
    decode = [r for r in run_to_completion(engine) if r.decode_sequences == max_num_seqs]
    return sum(r.duration_s for r in decode) / len(decode), sum(r.power_watts for r in decode) / len(decode)


def test_more_batch_means_more_power_and_longer_steps_but_less_energy_per_token() -> None:
    small_s, small_w = steady_state(8)
    big_s, big_w = steady_state(256)
    assert big_s > small_s
    assert big_w > small_w
    assert big_w * big_s / 256 < small_w * small_s / 8  # joules per output token


def test_energy_integrates_busy_and_idle_power() -> None:
    timing = LinearStubTiming()
    engine = BatchingEngine(timing, max_num_seqs=8, max_num_batched_tokens=8192)
    idle = timing.power_watts(0, 0.0)
    assert engine.energy_joules_at(10.0) == pytest.approx(idle * 10.0)
    engine.submit(EngineRequest("x", 100, 3), 10.0)
    results = run_to_completion(engine)
    busy_energy = sum(r.energy_joules for r in results)
    end = results[-1].end_s
    assert engine.energy_joules_at(end) == pytest.approx(idle * 10.0 + busy_energy)
    assert engine.energy_joules_at(end + 2.0) == pytest.approx(idle * 12.0 + busy_energy)
    # Mid-step readings interpolate and never decrease.
    readings = [engine.energy_joules_at(end - 0.001 * k) for k in range(5)]
    assert readings == sorted(readings, reverse=True)
    assert engine.power_watts_at(end - 1e-6) == results[-1].power_watts
    assert engine.power_watts_at(end + 1.0) == idle


def test_the_power_reading_is_the_last_seconds_average_as_nvml_gives_it_on_hopper() -> None:
    """nvmlDeviceGetPowerUsage averages over 1 s on Ampere and newer (but GA100): a reading between two steps is
    not idle power while the engine is busy; it is the energy of the last second, steps and idle gaps alike."""
    timing = LinearStubTiming()
    engine = BatchingEngine(timing, max_num_seqs=8, max_num_batched_tokens=8192)
    idle = timing.power_watts(0, 0.0)

    def energy(results: list[StepResult], u: float) -> float:  # brute force: every step, idle between
        busy = [(max(0.0, min(r.end_s, u) - r.start_s), r.power_watts) for r in results if r.start_s < u]
        return sum(d * w for d, w in busy) + idle * (u - sum(d for d, _ in busy))

    results: list[StepResult] = []
    readings = 0
    for burst in (5.0, 9.0):
        for i in range(40):
            engine.submit(EngineRequest(f"r{burst}-{i}", 300, 60), burst + 0.01 * i)
        while engine.has_work():
            results.append(engine.step(engine.clock_s))
            # A scrape in the middle of the step just computed (the server sleeps until its end), and one at its end.
            for t in ((results[-1].start_s + results[-1].end_s) / 2, results[-1].end_s):
                expected = energy(results, t) - energy(results, t - 1.0)
                assert engine.average_power_watts_at(t) == pytest.approx(expected, rel=1e-9), t
                readings += 1
    assert readings > 20
    assert engine.average_power_watts_at(results[-1].end_s - 0.5) > idle * 1.5  # busy reads busy
    assert engine.average_power_watts_at(results[-1].end_s + 1.0) == pytest.approx(idle)
    assert engine.average_power_watts_at(engine.clock_s + 30.0) == pytest.approx(idle)


def test_kv_cache_admits_by_prompt_and_preempts_when_out_of_blocks() -> None:
    """vLLM 0.11 v1: blocks are allocated as sequences grow, not reserved for the output; out of blocks, the last
    running sequence is preempted and recomputed (vllm/v1/core/sched/scheduler.py:276-331)."""
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=64, max_num_batched_tokens=8192, kv_cache_tokens=1000)
    reqs = requests(5, prompt=300, output=100)  # 19 blocks of prompt each; the cache has 62 blocks
    for r in reqs:
        engine.submit(r, 0.0)
    first = engine.step(0.0)
    assert first.running == 3 and len(engine.waiting) == 2  # the output length is not reserved
    assert 0.0 < engine.kv_cache_usage() <= 1.0
    results = run_to_completion(engine)
    assert engine.finished_total == 5
    assert engine.preemptions_total > 0
    victims = [r for r in reqs if r.preemptions]
    assert victims and reqs[0].preemptions == 0  # FCFS: the last running sequence goes first
    # A resumed sequence recomputed its prompt and outputs, then went on: the user saw one long gap, no new TTFT.
    assert sum(len(res.ttft_samples_s) for res in [first, *results]) == 5
    assert all(r.output_tokens == 100 and r.first_token_s is not None for r in reqs)
    assert engine.prompt_tokens_total > 5 * 300  # recomputation costs prefill tokens


def test_no_preemption_when_the_cache_holds_everything() -> None:
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=64, max_num_batched_tokens=8192, kv_cache_tokens=100_000)
    for r in requests(5, prompt=300, output=100):
        engine.submit(r, 0.0)
    run_to_completion(engine)
    assert engine.preemptions_total == 0 and engine.prompt_tokens_total == 1500


def test_with_the_energy_model_when_available() -> None:
    spec = SimSpec("meta-llama/Llama-3.1-8B-Instruct", 8.0, None, "bf16", "H100", 1, 256, 8192, None, 0.9)
    timing = make_timing(spec)
    engine = BatchingEngine(timing, max_num_seqs=64, max_num_batched_tokens=8192)
    for r in requests(64, prompt=200, output=10):
        engine.submit(r, 0.0)
    results = run_to_completion(engine)
    assert engine.finished_total == 64
    assert all(0 < r.duration_s < 5.0 for r in results)
    assert timing.power_watts(64, 1.0) > timing.power_watts(1, 1.0) > timing.power_watts(0, 0.0) > 0


def test_without_token_records_the_schedule_is_the_same() -> None:
    """record_tokens=False (the planner's replay) only leaves out the per-token lists of each step."""
    engines = [
        BatchingEngine(LinearStubTiming(), max_num_seqs=8, max_num_batched_tokens=512, kv_cache_tokens=3000,
                       record_tokens=record)
        for record in (True, False)
    ]
    runs = []
    for engine in engines:
        reqs = [EngineRequest(f"r{i}", prompt_tokens=50 + 97 * i % 700, max_output_tokens=5 + 13 * i % 90)
                for i in range(30)]
        for i, r in enumerate(reqs):
            engine.submit(r, 0.05 * i)
        steps = run_to_completion(engine)
        runs.append((reqs, steps))
    (loud, loud_steps), (quiet, quiet_steps) = runs
    assert engines[0].preemptions_total > 0  # the small cache exercises preemption too
    assert [(s.start_s, s.end_s, s.running, s.generation_tokens, len(s.finished), s.ttft_samples_s)
            for s in loud_steps] == [(s.start_s, s.end_s, s.running, s.generation_tokens, len(s.finished),
                                      s.ttft_samples_s) for s in quiet_steps]
    assert [(r.first_token_s, r.finished_s, r.preemptions) for r in loud] == \
        [(r.first_token_s, r.finished_s, r.preemptions) for r in quiet]
    assert all(not s.emitted and not s.itl_samples_s for s in quiet_steps)
    assert engines[0].generation_tokens_total == engines[1].generation_tokens_total == sum(r.output_tokens for r in loud)


def _state(engine: BatchingEngine, reqs: list[EngineRequest]) -> tuple[object, ...]:
    return (
        engine.clock_s, engine._energy_joules, engine._busy_seconds, engine._last_step_power_watts,
        tuple(engine._energy_marks), engine.prompt_tokens_total, engine.generation_tokens_total,
        engine.finished_total, engine.preemptions_total,
        tuple(r.request_id for r in engine.running), tuple(r.request_id for r in engine.waiting),
        tuple((r.prefilled_tokens, r.output_tokens, r.recompute_tokens, r.kv_blocks, r.preemptions, r.scheduled_s,
               r.first_token_s, r.last_token_s, r.finished_s) for r in reqs),
    )


@pytest.mark.parametrize("seed", range(40))
def test_run_until_leaves_everything_as_stepping_one_by_one(seed: int) -> None:
    """The replay's `run_until` skips visiting each sequence in runs of pure-decode steps: the same engine driven
    step by step must end bit for bit where it does, through KV-cache preemptions, max-num-seqs, chunked prompts,
    step budgets and a clock limit."""
    import random

    rng = random.Random(seed)
    seqs = rng.choice([2, 8, 64, 256])
    budget = rng.choice([64, 512, 2048])
    kv = rng.choice([None, 300, 2_000, 20_000])
    arrivals: list[tuple[float, int, int]] = []
    t = 0.0
    for _ in range(rng.randint(1, 80)):
        t += rng.expovariate(rng.choice([2.0, 20.0]))
        arrivals.append((t, rng.randint(1, 3000), rng.randint(1, 400)))
    max_steps = rng.choice([50, 100_000])

    def drive(fast: bool) -> tuple[object, ...]:
        engine = BatchingEngine(LinearStubTiming(), seqs, budget, kv_cache_tokens=kv, record_tokens=False)
        reqs = [EngineRequest(f"r{i}", p, o) for i, (_, p, o) in enumerate(arrivals)]
        steps = 0
        for (at, _, _), r in zip(arrivals, reqs, strict=True):
            if fast:
                steps += engine.run_until(at, max_steps - steps)
            else:
                while engine.has_work() and engine.clock_s < at and steps < max_steps:
                    engine.step(engine.clock_s)
                    steps += 1
            engine.submit(r, at)
        if fast:
            steps += engine.run_until(float("inf"), max_steps - steps)
        else:
            while engine.has_work() and steps < max_steps:
                engine.step(engine.clock_s)
                steps += 1
        return (steps, *_state(engine, reqs))

    assert drive(True) == drive(False)


def test_run_until_steps_one_by_one_when_tokens_are_recorded() -> None:
    def started(record: bool) -> BatchingEngine:
        engine = BatchingEngine(LinearStubTiming(), 8, 512, record_tokens=record)
        for r in requests(3, prompt=50, output=30):
            engine.submit(r, 0.0)
        engine.step(0.0)  # the prompts: every sequence decodes from here on
        return engine

    assert started(False)._decode_run(float("inf"), 100) == 28  # a pure-decode run to skip, up to the last step
    recorded = started(True)
    steps = []
    recorded.step = lambda now_s: steps.append(now_s) or BatchingEngine.step(recorded, now_s)  # type: ignore[method-assign]
    assert recorded.run_until(float("inf"), 10_000) == 29 == len(steps)  # with tokens recorded, every step is taken
