"""`BatchingEngine`: vLLM-style continuous batching on a virtual clock, pure and synchronous.

The simulator's HTTP server drives it in real time (scaled by --speedup); a trace-replay benchmark can drive it
directly, with no asyncio or HTTP, by alternating `submit` and `step`:

    engine = BatchingEngine(timing, max_num_seqs=256, max_num_batched_tokens=8192)
    engine.submit(EngineRequest("r1", prompt_tokens=512, max_output_tokens=128), now_s=0.0)
    while engine.has_work():
        result = engine.step(engine.clock_s)      # back to back, like vLLM's busy loop
        ...                                       # result.finished, result.ttft_samples_s, result.power_watts
    engine.energy_joules_at(t)                    # idle power counts between steps

One step is one vLLM v1 scheduler iteration with chunked prefill: running sequences that are decoding take one
token each from the `max_num_batched_tokens` budget first, partially prefilled prompts continue with what is left,
then waiting requests are admitted first-come-first-served while fewer than `max_num_seqs` run, budget remains and
the KV cache can hold their prompt plus their maximum output (reserving the maximum means no preemption, which
vLLM only needs when it overcommits). A prompt longer than the remaining budget is prefilled in chunks over
several steps. At the end of a step every decoding sequence has one more token and every prompt whose prefill
finished has its first token.

Step duration = decode_step_seconds(decoding sequences, their mean context, prefill tokens riding along), or
prefill_seconds(prefill tokens) for a step with no decoding sequence. Power during a step = power_watts(running
sequences, busy 1.0, mean context); between steps the replica draws power_watts(0, 0.0). Energy is power
integrated over virtual time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .timing import StepTiming


@dataclass
class EngineRequest:
    """One request and its progress. Times are virtual seconds."""

    request_id: str
    prompt_tokens: int
    max_output_tokens: int
    arrival_s: float = 0.0
    prefilled_tokens: int = 0
    output_tokens: int = 0
    scheduled_s: float | None = None  # first admitted into the running batch
    first_token_s: float | None = None
    last_token_s: float | None = None
    finished_s: float | None = None

    @property
    def in_prefill(self) -> bool:
        return self.prefilled_tokens < self.prompt_tokens

    @property
    def context_tokens(self) -> int:
        return self.prefilled_tokens + self.output_tokens

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens + self.max_output_tokens


@dataclass
class StepResult:
    """What one step did. `emitted` lists (request, tokens generated so far) for every token produced."""

    start_s: float
    end_s: float
    power_watts: float
    running: int  # sequences in the batch this step
    decode_sequences: int
    prefill_tokens: int
    generation_tokens: int
    emitted: list[tuple[EngineRequest, int]] = field(default_factory=list)
    finished: list[EngineRequest] = field(default_factory=list)
    ttft_samples_s: list[float] = field(default_factory=list)
    itl_samples_s: list[float] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def energy_joules(self) -> float:
        return self.power_watts * self.duration_s


class BatchingEngine:
    """Continuous batching limited by max_num_seqs, max_num_batched_tokens and the KV cache (see module doc)."""

    def __init__(
        self,
        timing: StepTiming,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        kv_cache_tokens: int | None = None,
        start_s: float = 0.0,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.timing = timing
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        capacity = timing.kv_cache_tokens() if kv_cache_tokens is None else kv_cache_tokens
        self.kv_cache_tokens = capacity if capacity > 0 else None  # None: unlimited
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.clock_s = start_s  # virtual time up to which energy is accounted (end of the last step)
        self.idle_power_watts = timing.power_watts(0, 0.0)
        self._energy_joules = 0.0
        self._busy_seconds = 0.0
        self._last_step_power_watts = self.idle_power_watts
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished_total = 0

    # --- inputs -------------------------------------------------------------------------------------------------

    def submit(self, request: EngineRequest, now_s: float) -> None:
        """Queue a request arriving at `now_s` (submit in arrival order; a trace replay may submit ahead)."""
        if request.prompt_tokens < 1:
            request.prompt_tokens = 1  # vLLM needs at least one prompt token (the BOS token)
        if request.max_output_tokens < 1:
            raise ValueError("max_output_tokens must be >= 1")
        request.arrival_s = now_s
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- the step -----------------------------------------------------------------------------------------------

    def _reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.running)

    def _fits(self, request: EngineRequest) -> bool:
        if self.kv_cache_tokens is None or not self.running:
            return True  # an empty engine always takes one request, or a huge one would wait forever
        return self._reserved_tokens() + request.reserved_tokens <= self.kv_cache_tokens

    def _schedule(self, start_s: float) -> tuple[list[EngineRequest], list[tuple[EngineRequest, int]]]:
        """Choose the decoding sequences and the prefill chunks of this step."""
        budget = self.max_num_batched_tokens
        decoding: list[EngineRequest] = []
        chunks: list[tuple[EngineRequest, int]] = []
        for request in self.running:
            if budget <= 0:
                break
            if request.in_prefill:
                chunk = min(request.prompt_tokens - request.prefilled_tokens, budget)
                chunks.append((request, chunk))
                budget -= chunk
            else:
                decoding.append(request)
                budget -= 1
        while (
            self.waiting
            and self.waiting[0].arrival_s <= start_s
            and budget > 0
            and len(self.running) < self.max_num_seqs
            and self._fits(self.waiting[0])
        ):
            request = self.waiting.popleft()
            request.scheduled_s = start_s
            self.running.append(request)
            chunk = min(request.prompt_tokens, budget)
            chunks.append((request, chunk))
            budget -= chunk
        return decoding, chunks

    def step(self, now_s: float) -> StepResult:
        """Run one iteration starting at `now_s`, or later: at the end of the previous one, or, when nothing runs,
        at the next arrival. Requests submitted with a future arrival time wait until then."""
        start_s = max(now_s, self.clock_s)
        if not self.running and self.waiting and self.waiting[0].arrival_s > start_s:
            start_s = self.waiting[0].arrival_s  # nothing to do before the next request arrives
        self._energy_joules += self.idle_power_watts * (start_s - self.clock_s)
        decoding, chunks = self._schedule(start_s)
        prefill_tokens = sum(chunk for _, chunk in chunks)
        running = decoding + [r for r, _ in chunks]
        mean_context = round(sum(r.context_tokens for r in running) / len(running)) if running else 0
        if decoding:
            decode_context = round(sum(r.context_tokens for r in decoding) / len(decoding))
            duration_s = self.timing.decode_step_seconds(len(decoding), decode_context, prefill_tokens)
        elif prefill_tokens:
            duration_s = self.timing.prefill_seconds(prefill_tokens)
        else:
            duration_s = 0.0
        batch = len(running)
        power_watts = self.timing.power_watts(batch, 1.0, max(1, mean_context)) if batch else self.idle_power_watts
        end_s = start_s + duration_s
        result = StepResult(
            start_s=start_s,
            end_s=end_s,
            power_watts=power_watts,
            running=batch,
            decode_sequences=len(decoding),
            prefill_tokens=prefill_tokens,
            generation_tokens=0,
        )
        for request in decoding:
            request.output_tokens += 1
            if request.last_token_s is not None:
                result.itl_samples_s.append(end_s - request.last_token_s)
            request.last_token_s = end_s
            result.emitted.append((request, request.output_tokens))
        for request, chunk in chunks:
            request.prefilled_tokens += chunk
            if not request.in_prefill:  # the step that ends prefill samples the first token
                request.output_tokens = 1
                request.first_token_s = request.last_token_s = end_s
                result.ttft_samples_s.append(end_s - request.arrival_s)
                result.emitted.append((request, 1))
        result.generation_tokens = len(result.emitted)
        for request in [r for r in self.running if r.output_tokens >= r.max_output_tokens]:
            request.finished_s = end_s
            self.running.remove(request)
            result.finished.append(request)
        self.prompt_tokens_total += prefill_tokens
        self.generation_tokens_total += result.generation_tokens
        self.finished_total += len(result.finished)
        self._energy_joules += power_watts * duration_s
        self._busy_seconds += duration_s if batch else 0.0
        self._last_step_power_watts = power_watts
        self.clock_s = end_s
        return result

    # --- readings at any virtual time ---------------------------------------------------------------------------

    def energy_joules_at(self, t_s: float) -> float:
        """Energy since start, at `t_s`; inside a step, the step's energy counts pro rata (so it never decreases)."""
        if t_s >= self.clock_s:
            return self._energy_joules + self.idle_power_watts * (t_s - self.clock_s)
        return max(0.0, self._energy_joules - self._last_step_power_watts * (self.clock_s - t_s))

    def power_watts_at(self, t_s: float) -> float:
        return self._last_step_power_watts if t_s < self.clock_s else self.idle_power_watts

    def busy_seconds_at(self, t_s: float) -> float:
        if t_s >= self.clock_s:
            return self._busy_seconds
        return max(0.0, self._busy_seconds - (self.clock_s - t_s))

    def kv_cache_usage(self) -> float:
        """Share of the KV cache the running sequences fill now (0 when unlimited)."""
        if not self.kv_cache_tokens:
            return 0.0
        return min(1.0, sum(r.context_tokens for r in self.running) / self.kv_cache_tokens)


def run_to_completion(engine: BatchingEngine, max_steps: int = 10_000_000) -> list[StepResult]:
    """Step back to back until nothing is left (for tests and offline replays without arrivals)."""
    results = []
    for _ in range(max_steps):
        if not engine.has_work():
            break
        results.append(engine.step(engine.clock_s))
    return results
