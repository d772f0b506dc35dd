"""`BatchingEngine`: vLLM-style continuous batching on a virtual clock, pure and synchronous.

The simulator's HTTP server drives it in real time (scaled by --speedup); a trace-replay benchmark can drive it
directly, with no asyncio or HTTP, by alternating `submit` and `step`:

    engine = BatchingEngine(timing, max_num_seqs=256, max_num_batched_tokens=8192)
    engine.submit(EngineRequest("r1", prompt_tokens=512, max_output_tokens=128), now_s=0.0)
    while engine.has_work():
        result = engine.step(engine.clock_s)      # back to back, like vLLM's busy loop
        ...                                       # result.finished, result.ttft_samples_s, result.power_watts
    engine.energy_joules_at(t)                    # idle power counts between steps

One step is one vLLM v1 scheduler iteration with chunked prefill (vllm 0.11.1, vllm/v1/core/sched/scheduler.py
`Scheduler.schedule`): running sequences are served first, in order, each taking its tokens from the
`max_num_batched_tokens` budget (one for a decoding sequence, the rest of its prompt or a chunk of it for one that is
prefilling) and the KV-cache blocks those tokens need (scheduler.py:276-281, `allocate_slots`). The KV cache is
allocated as sequences grow, in blocks of `KV_BLOCK_TOKENS`, never reserved for an output length nobody knows yet.
When a running sequence needs a block and none is free, the last running sequence is preempted (scheduler.py:319,
`self.running.pop()` under the FCFS policy): its blocks are freed, its computed tokens reset to zero
(scheduler.py:321-324) and it goes back to the front of the waiting queue (scheduler.py:331); when it is scheduled
again it recomputes its prompt and the tokens it already produced before it emits its next token. Waiting requests
are admitted first-come-first-served, only in a step that preempted nothing (scheduler.py:396), while fewer than
`max_num_seqs` run, budget remains and the blocks of their first prompt chunk are free (scheduler.py:551-563). A
prompt longer than the remaining budget is prefilled in chunks over several steps. At the end of a step every
decoding sequence has one more token and every prompt whose prefill finished has its next token.

Step duration = decode_step_seconds(decoding sequences, their mean context, prefill tokens riding along), or
prefill_seconds(prefill tokens) for a step with no decoding sequence. Power during a step = power_watts(running
sequences, busy 1.0, mean context); between steps the replica draws power_watts(0, 0.0). Energy is power
integrated over virtual time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .timing import StepTiming

KV_BLOCK_TOKENS = 16  # vLLM's default block size on CUDA (--block-size 16)
POWER_AVERAGE_SECONDS = 1.0  # NVML's power reading on Hopper: an average over the last second
MARKS_KEPT_SECONDS = 2.0


def kv_blocks(tokens: int) -> int:
    return -(-tokens // KV_BLOCK_TOKENS)


@dataclass
class EngineRequest:
    """One request and its progress. Times are virtual seconds.

    `max_output_tokens` is when the sequence stops (its EOS or max_tokens); the scheduler never reads it to reserve
    KV cache. After a preemption the tokens it had produced (`recompute_tokens`) are prefilled again with its prompt.
    """

    request_id: str
    prompt_tokens: int
    max_output_tokens: int
    arrival_s: float = 0.0
    prefilled_tokens: int = 0
    output_tokens: int = 0
    recompute_tokens: int = 0  # output tokens to recompute after the last preemption
    kv_blocks: int = 0  # KV-cache blocks held now
    preemptions: int = 0
    scheduled_s: float | None = None  # first admitted into the running batch
    first_token_s: float | None = None
    last_token_s: float | None = None
    finished_s: float | None = None

    @property
    def prefill_target(self) -> int:
        return self.prompt_tokens + self.recompute_tokens

    @property
    def in_prefill(self) -> bool:
        return self.prefilled_tokens < self.prompt_tokens + self.recompute_tokens

    @property
    def context_tokens(self) -> int:
        """Tokens whose KV is computed (the prompt and outputs recomputed so far count once)."""
        return self.prefilled_tokens + self.output_tokens - self.recompute_tokens


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
    preempted: list[EngineRequest] = field(default_factory=list)
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
        record_tokens: bool = True,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.timing = timing
        # False: steps leave `emitted` and `itl_samples_s` empty, for a replay that reads only the requests' own
        # times (it saves a list entry per token); the schedule, times and counts are the same.
        self.record_tokens = record_tokens
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        capacity = timing.kv_cache_tokens() if kv_cache_tokens is None else kv_cache_tokens
        self.kv_cache_tokens = capacity if capacity > 0 else None  # None: unlimited
        self.kv_total_blocks = capacity // KV_BLOCK_TOKENS if capacity > 0 else None
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.clock_s = start_s  # virtual time up to which energy is accounted (end of the last step)
        self.idle_power_watts = timing.power_watts(0, 0.0)
        self._energy_joules = 0.0
        self._busy_seconds = 0.0
        self._last_step_power_watts = self.idle_power_watts
        # (virtual time, energy) at the recent step boundaries: energy is linear between two of them (a step's
        # power, or idle power between steps), which gives the power averaged over the last second exactly.
        self._energy_marks: deque[tuple[float, float]] = deque([(start_s, 0.0)])
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished_total = 0
        self.preemptions_total = 0

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

    def retime(self, timing: StepTiming, now_s: float) -> None:
        """Step timing and power change from `now_s` on (a GPU power limit set on the running process): the queues,
        the running batch and its KV blocks stay; idle time up to `now_s` counts at the old idle power; a step in
        progress finishes at its old pace and power. The KV capacity stays as allocated at start."""
        if now_s > self.clock_s and not self.has_work():
            self._energy_joules += self.idle_power_watts * (now_s - self.clock_s)
            self.clock_s = now_s
            self._mark(now_s)
        self.timing = timing
        self.idle_power_watts = timing.power_watts(0, 0.0)

    # --- the step -----------------------------------------------------------------------------------------------

    def _free_blocks(self) -> int | None:
        if self.kv_total_blocks is None:
            return None
        return self.kv_total_blocks - sum([r.kv_blocks for r in self.running])

    def _preempt(self, request: EngineRequest) -> None:
        """Free its blocks and recompute it later (scheduler.py:321-331, the v1 engine's only preemption mode)."""
        request.kv_blocks = 0
        request.recompute_tokens = request.output_tokens
        request.prefilled_tokens = 0
        request.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(request)

    def _schedule(
        self, start_s: float
    ) -> tuple[list[EngineRequest], list[tuple[EngineRequest, int]], list[EngineRequest], int, int]:
        """Choose the decoding sequences and the prefill chunks of this step, and whom it preempts; with the summed
        context tokens of the decoding and of the prefilling sequences."""
        # The hot loop of every replay (the planner's verification runs ~1,500 steps a decision): the request
        # properties (prefill_target, in_prefill, context_tokens) and kv_blocks() are inlined, same arithmetic.
        budget = self.max_num_batched_tokens
        decode_context = chunk_context = 0
        decoding: list[EngineRequest] = []
        chunks: list[tuple[EngineRequest, int]] = []
        preempted: list[EngineRequest] = []
        running = self.running
        free = self._free_blocks()
        i = 0
        count = len(running)  # kept as preemption pops the list
        while i < count and budget > 0:
            request = running[i]
            prefilled = request.prefilled_tokens
            remaining = request.prompt_tokens + request.recompute_tokens - prefilled
            new = min(remaining, budget) if remaining > 0 else 1
            context = prefilled + request.output_tokens - request.recompute_tokens
            if free is not None:
                need = -(-(context + new) // KV_BLOCK_TOKENS) - request.kv_blocks
                if need > free:
                    while need > free:
                        victim = running[-1]
                        if victim is request and i == 0:
                            break  # alone: run over rather than stall (vLLM rejects prompts longer than its cache)
                        running.pop()
                        count -= 1
                        free += victim.kv_blocks
                        self._preempt(victim)
                        preempted.append(victim)
                        if victim is request:
                            break
                    if preempted and preempted[-1] is request:
                        break
                request.kv_blocks += need
                free -= need
            if remaining > 0:
                chunks.append((request, new))
                chunk_context += context
            else:
                decoding.append(request)
                decode_context += context
            budget -= new
            i += 1
        waiting = self.waiting
        while (
            not preempted
            and waiting
            and waiting[0].arrival_s <= start_s
            and budget > 0
            and len(running) < self.max_num_seqs
        ):
            request = waiting[0]
            new = min(request.prefill_target - request.prefilled_tokens, budget)
            context = request.context_tokens
            need = 0
            if free is not None:
                need = kv_blocks(context + new) - request.kv_blocks
                if need > free and running:
                    break  # an empty engine always takes one request, or a huge one would wait forever
            waiting.popleft()
            request.kv_blocks += need
            if free is not None:
                free -= need
            if request.scheduled_s is None:
                request.scheduled_s = start_s
            running.append(request)
            chunks.append((request, new))
            chunk_context += context
            budget -= new
        return decoding, chunks, preempted, decode_context, chunk_context

    def step(self, now_s: float) -> StepResult:
        """Run one iteration starting at `now_s`, or later: at the end of the previous one, or, when nothing runs,
        at the next arrival. Requests submitted with a future arrival time wait until then."""
        start_s = max(now_s, self.clock_s)
        if not self.running and self.waiting and self.waiting[0].arrival_s > start_s:
            start_s = self.waiting[0].arrival_s  # nothing to do before the next request arrives
        self._energy_joules += self.idle_power_watts * (start_s - self.clock_s)
        self._mark(start_s)
        decoding, chunks, preempted, decode_sum, chunk_sum = self._schedule(start_s)
        prefill_tokens = sum([chunk for _, chunk in chunks])
        # Context sums are integers, so summing the decoding and prefilling parts apart changes nothing.
        batch = len(decoding) + len(chunks)
        mean_context = round((decode_sum + chunk_sum) / batch) if batch else 0
        if decoding:
            decode_context = round(decode_sum / len(decoding))
            duration_s = self.timing.decode_step_seconds(len(decoding), decode_context, prefill_tokens)
        elif prefill_tokens:
            duration_s = self.timing.prefill_seconds(prefill_tokens)
        else:
            duration_s = 0.0
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
            preempted=preempted,
        )
        emitted = result.emitted
        itl_samples = result.itl_samples_s
        record = self.record_tokens
        # Only a sequence that ran this step can have reached its length (the rest were checked when they ran).
        any_done = False
        if record:
            for request in decoding:
                request.output_tokens += 1
                if request.last_token_s is not None:
                    itl_samples.append(end_s - request.last_token_s)
                request.last_token_s = end_s
                emitted.append((request, request.output_tokens))
                any_done = any_done or request.output_tokens >= request.max_output_tokens
        else:
            for request in decoding:
                request.output_tokens += 1
                request.last_token_s = end_s
                any_done = any_done or request.output_tokens >= request.max_output_tokens
        generated = len(decoding)
        for request, chunk in chunks:
            request.prefilled_tokens += chunk
            if not request.in_prefill:  # the step that ends prefill samples the next token
                request.output_tokens += 1
                generated += 1
                if request.first_token_s is None:
                    request.first_token_s = end_s
                    result.ttft_samples_s.append(end_s - request.arrival_s)
                elif request.last_token_s is not None and record:  # resumed after a preemption: a long gap
                    itl_samples.append(end_s - request.last_token_s)
                request.last_token_s = end_s
                if record:
                    emitted.append((request, request.output_tokens))
            any_done = any_done or request.output_tokens >= request.max_output_tokens
        result.generation_tokens = generated
        done = [r for r in self.running if r.output_tokens >= r.max_output_tokens] if any_done else []
        if done:
            for request in done:
                request.finished_s = end_s
            # In place and in order, as removing them one by one did (callers may hold the list).
            self.running[:] = [r for r in self.running if r.output_tokens < r.max_output_tokens]
            result.finished.extend(done)
        self.prompt_tokens_total += prefill_tokens
        self.generation_tokens_total += result.generation_tokens
        self.finished_total += len(result.finished)
        self._energy_joules += power_watts * duration_s
        self._busy_seconds += duration_s if batch else 0.0
        self._last_step_power_watts = power_watts
        self.clock_s = end_s
        self._mark(end_s)
        return result

    def run_until(self, until_s: float, max_steps: int) -> int:
        """Step back to back, as `step(self.clock_s)` in a loop, while there is work, the clock is before `until_s`
        and fewer than `max_steps` steps were taken; returns the steps taken. Every request, counter and energy
        figure ends as that loop leaves it.

        Without `record_tokens` (a replay reads only the requests' own times) a run of steps in which nothing but
        decoding can happen is advanced without visiting each sequence at each step: every running sequence is
        decoding, none reaches its length, no admission is possible and the KV cache has the blocks for all of
        them. Such a step's schedule is then known (all running sequences, one token each, in order) and its
        duration depends only on the batch and its mean context, which grows by one token a step."""
        taken = 0
        while taken < max_steps and self.has_work() and self.clock_s < until_s:
            fast = self._decode_run(until_s, max_steps - taken) if not self.record_tokens else 0
            if fast == 0:
                self.step(self.clock_s)
                fast = 1
            taken += fast
        return taken

    def _decode_run(self, until_s: float, max_steps: int) -> int:
        """Up to `max_steps` pure-decode steps (see `run_until`) starting at the clock; the steps taken (0 when
        the next step is not one)."""
        running = self.running
        n = len(running)
        if n == 0 or n > self.max_num_batched_tokens:
            return 0
        newest = running[-1]  # admitted last: the one most likely still prefilling
        if newest.prefilled_tokens < newest.prompt_tokens + newest.recompute_tokens:
            return 0
        context_sum = held = 0
        last = max_steps + 1  # steps until the first sequence reaches its length
        contexts: list[int] = []
        for r in running:
            prefilled, recompute, out = r.prefilled_tokens, r.recompute_tokens, r.output_tokens
            if prefilled < r.prompt_tokens + recompute:
                return 0
            left = r.max_output_tokens - out
            if left < last:
                last = left
                if last <= 1:
                    return 0  # the step in which a sequence finishes goes through `step` (it changes the batch)
            context = prefilled + out - recompute
            context_sum += context
            contexts.append(context)
            held += r.kv_blocks
        limit = min(max_steps, last - 1)
        total = self.kv_total_blocks
        if total is not None:
            free = total - held
            if any(-(-(c + 1) // KV_BLOCK_TOKENS) < r.kv_blocks for c, r in zip(contexts, running, strict=True)):
                return 0  # a sequence holding more blocks than its next token needs: `step` frees them

            def blocks(k: int) -> int:  # blocks the batch needs beyond what it holds, k steps on
                return sum([-(-(c + k) // KV_BLOCK_TOKENS) for c in contexts]) - held

            if blocks(limit) > free:
                if blocks(1) > free:
                    return 0
                lo, hi = 1, limit  # the most steps whose blocks are all free: no preemption within them
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if blocks(mid) <= free:
                        lo = mid
                    else:
                        hi = mid - 1
                limit = lo
        waiting = self.waiting
        admits = bool(waiting) and n < self.max_num_seqs and self.max_num_batched_tokens - n > 0
        next_arrival = waiting[0].arrival_s if admits else float("inf")
        timing = self.timing
        taken = 0
        clock = self.clock_s
        energy = self._energy_joules
        busy = self._busy_seconds
        power = self._last_step_power_watts
        mark = self._mark
        while taken < limit and clock < until_s and next_arrival > clock:
            # As `step`: no idle time before it (it starts at the clock), one token for each of n sequences.
            self._energy_joules = energy
            mark(clock)
            context = round(context_sum / n)
            duration = timing.decode_step_seconds(n, context, 0)
            power = timing.power_watts(n, 1.0, max(1, context))
            end = clock + duration
            energy += power * duration
            busy += duration
            clock = end
            self._energy_joules = energy
            mark(end)
            context_sum += n
            taken += 1
        if taken == 0:
            return 0
        for r in running:
            r.output_tokens += taken
            r.last_token_s = clock
            if self.kv_total_blocks is not None:
                r.kv_blocks = -(-(r.prefilled_tokens + r.output_tokens - r.recompute_tokens) // KV_BLOCK_TOKENS)
        self.generation_tokens_total += n * taken
        self._busy_seconds = busy
        self._last_step_power_watts = power
        self.clock_s = clock
        return taken

    # --- readings at any virtual time ---------------------------------------------------------------------------

    def energy_joules_at(self, t_s: float) -> float:
        """Energy since start, at `t_s`; inside a step, the step's energy counts pro rata (so it never decreases)."""
        if t_s >= self.clock_s:
            return self._energy_joules + self.idle_power_watts * (t_s - self.clock_s)
        return max(0.0, self._energy_joules - self._last_step_power_watts * (self.clock_s - t_s))

    def power_watts_at(self, t_s: float) -> float:
        """The power of the step running at `t_s` (instantaneous: idle between two steps)."""
        return self._last_step_power_watts if t_s < self.clock_s else self.idle_power_watts

    def average_power_watts_at(self, t_s: float, over_s: float = POWER_AVERAGE_SECONDS) -> float:
        """The power averaged over the `over_s` before `t_s`: what NVML's nvmlDeviceGetPowerUsage (and so
        dcgm-exporter's DCGM_FI_DEV_POWER_USAGE) reads on Ampere and newer, except GA100 (nvml.h: "the API returns
        power averaged over 1 sec interval"). An instantaneous reading is biased towards idle: a scrape is
        answered between two steps."""
        return (self._energy_at(t_s) - self._energy_at(t_s - over_s)) / over_s

    def _mark(self, t_s: float) -> None:
        marks = self._energy_marks
        marks.append((t_s, self._energy_joules))
        while len(marks) > 2 and marks[1][0] < t_s - MARKS_KEPT_SECONDS:
            marks.popleft()

    def _energy_at(self, t_s: float) -> float:
        """Energy at `t_s` within the marks kept (up to MARKS_KEPT_SECONDS before the last step), or after them."""
        marks = self._energy_marks
        if t_s >= marks[-1][0]:
            return self.energy_joules_at(t_s)
        if t_s <= marks[0][0]:  # before what is kept (or before start): idle power back from the oldest mark
            return max(0.0, marks[0][1] - self.idle_power_watts * (marks[0][0] - t_s))
        later = next(i for i, (when, _) in enumerate(marks) if when > t_s)
        (t0, e0), (t1, e1) = marks[later - 1], marks[later]
        return e0 + (e1 - e0) * (t_s - t0) / (t1 - t0)

    def busy_seconds_at(self, t_s: float) -> float:
        if t_s >= self.clock_s:
            return self._busy_seconds
        return max(0.0, self._busy_seconds - (self.clock_s - t_s))

    def kv_cache_usage(self) -> float:
        """Share of the KV cache the running sequences fill now (0 when unlimited)."""
        if not self.kv_cache_tokens:
            return 0.0
        return min(1.0, sum(r.kv_blocks for r in self.running) * KV_BLOCK_TOKENS / self.kv_cache_tokens)


def run_to_completion(engine: BatchingEngine, max_steps: int = 10_000_000) -> list[StepResult]:
    """Step back to back until nothing is left (for tests and offline replays without arrivals)."""
    results = []
    for _ in range(max_steps):
        if not engine.has_work():
            break
        results.append(engine.step(engine.clock_s))
    return results
