"""`wattkeeper-runtime sim`: a GPU-less stand-in for `vllm serve`, timed by the energy model.

It takes `vllm serve`'s arguments (unknown flags are ignored with a warning) and serves, on one port:
- POST /v1/completions and /v1/chat/completions (OpenAI-compatible, non-streaming and `stream: true` SSE),
  answering with filler tokens; `max_tokens` (or `max_completion_tokens`) sets the output length;
- GET /v1/models, GET /health, GET /version;
- GET /metrics: vLLM 0.11's metrics and dcgm-exporter's metrics for its TP-degree simulated GPUs (or the DCGM
  series on their own port with --dcgm-port, as a separate dcgm-exporter would serve them).

Requests go through a `BatchingEngine`; an asyncio task runs its steps back to back on a virtual clock that runs
`--speedup` times faster than the wall clock. All times in metrics are virtual seconds.

SIGTERM does what it does to vLLM 0.11.1: the requests in flight are cancelled, not finished. vLLM's handler
cancels the HTTP server task (vllm/entrypoints/launcher.py:84-95) and the engine shuts down with the requests it
holds (vllm/entrypoints/openai/api_server.py:252-254) before the server's shutdown is awaited (2043-2079); clients
see their connections cut. Only a preStop drain (`wattkeeper-runtime drain`) saves them, here as on a real cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import __version__
from .engine import BatchingEngine, EngineRequest, StepResult
from .simmetrics import DcgmMetrics, PodLabels, VllmMetrics
from .timing import SimSpec, StepTiming, make_timing

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FILLER_TOKEN = " token"
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text under Llama-style BPE tokenizers


# --- arguments ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattkeeper-runtime sim", description="Simulate `vllm serve` without a GPU.", allow_abbrev=False
    )
    parser.add_argument("model", nargs="?", help="model name or path, as `vllm serve MODEL`")
    parser.add_argument("--model", dest="model_option", help="the model, older `--model` form")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--max-num-seqs", type=int, default=256)  # vLLM's default on H100-class GPUs
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--quantization", "-q", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", nargs="+", default=None)
    sim = parser.add_argument_group("simulator only")
    sim.add_argument("--gpu-type", default="H100", help="accelerator of the energy model's catalog")
    sim.add_argument("--model-params-b", type=float, default=None, help="total parameters, billions (else from name)")
    sim.add_argument("--active-params-b", type=float, default=None, help="MoE: active parameters, billions")
    sim.add_argument("--pod-namespace", default="", help="namespace label of the DCGM series")
    sim.add_argument("--pod-name", default="", help="pod label of the DCGM series")
    sim.add_argument("--pod-container", default="vllm", help="container label of the DCGM series")
    sim.add_argument("--hostname", default=None, help="Hostname label of the DCGM series (default: this host)")
    sim.add_argument("--speedup", type=float, default=1.0, help="simulated time runs this many times faster")
    sim.add_argument("--dcgm-port", type=int, default=None, help="serve DCGM metrics on their own port")
    sim.add_argument("--stub-timing", action="store_true", help="use the stub timing, not the energy model")
    sim.add_argument("--gpu-power-limit-watts", type=float, default=None,
                     help="GPU power limit, W per GPU (what the node agent would set; the profiler's sweep)")
    return parser


def parse_sim_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse like `vllm serve`: unknown flags (and their values) are ignored with a warning."""
    parser = build_parser()
    options, unknown = parser.parse_known_args(list(argv))
    if unknown:
        log.warning("ignoring vllm serve arguments the simulator does not model: %s", " ".join(unknown))
    options.model = options.model or options.model_option
    if not options.model:
        parser.error("a model is required (vllm serve MODEL)")
    if options.speedup <= 0:
        parser.error("--speedup must be > 0")
    return options


_PARAMS_IN_NAME = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)[bB](?![a-zA-Z])")
_ACTIVE_IN_NAME = re.compile(r"[-_][aA]([0-9]+(?:\.[0-9]+)?)[bB](?![a-zA-Z])")


def params_from_name(name: str) -> tuple[float | None, float | None]:
    """Total and active parameters (billions) as model names spell them: Llama-3.1-8B, Qwen3-30B-A3B."""
    base = name.rsplit("/", 1)[-1]
    active = _ACTIVE_IN_NAME.search(base)
    without_active = _ACTIVE_IN_NAME.sub("", base)
    total = _PARAMS_IN_NAME.search(without_active)
    return (float(total.group(1)) if total else None, float(active.group(1)) if active else None)


_QUANTIZATION_TO_PRECISION = {
    "fp8": "fp8",
    "modelopt": "fp8",
    "compressed-tensors": "int8",
    "rtn": "int8",  # weight-only int8 on load (vLLM 0.11 rtn.py, 8 bits by default)
    "awq": "int4-awq",
    "awq_marlin": "int4-awq",
    "gptq": "int4-gptq",
    "gptq_marlin": "int4-gptq",
    "mxfp4": "mxfp4",
    "bitsandbytes": "int4-gptq",  # in-flight bitsandbytes is 4-bit weight-only
}


def precision_of(quantization: str | None, dtype: str, model: str) -> str:
    """The serving precision that `vllm serve` flags mean (a pre-quantized FP8 checkpoint says so in its name)."""
    if quantization:
        return _QUANTIZATION_TO_PRECISION.get(quantization.lower(), "bf16")
    name = model.lower()
    for fragment, precision in (("fp8", "fp8"), ("w8a8", "int8"), ("w8a16", "int8"), ("int8", "int8"), ("awq", "int4-awq"),
                                ("gptq", "int4-gptq"), ("mxfp4", "mxfp4"), ("gpt-oss", "mxfp4")):  # fmt: skip
        if fragment in name:
            return precision
    return "fp16" if dtype in ("float16", "half") else "bf16"


def spec_from_options(options: argparse.Namespace) -> SimSpec:
    total_b, active_b = params_from_name(options.model)
    params_b = options.model_params_b or total_b or 8.0
    active = options.active_params_b or active_b
    kv_dtype = None if options.kv_cache_dtype in (None, "auto") else options.kv_cache_dtype
    return SimSpec(
        model_name=options.model,
        params_b=params_b,
        active_params_b=active,
        precision=precision_of(options.quantization, options.dtype, options.model),
        gpu_type=options.gpu_type,
        tensor_parallel=options.tensor_parallel_size,
        max_num_seqs=options.max_num_seqs,
        max_num_batched_tokens=options.max_num_batched_tokens,
        kv_cache_dtype=kv_dtype,
        gpu_memory_utilization=options.gpu_memory_utilization,
        gpu_power_limit_watts=options.gpu_power_limit_watts,
    )


# --- the engine in (scaled) real time ---------------------------------------------------------------------------


class SimClock:
    """Virtual seconds since start, running `speedup` times faster than the monotonic clock."""

    def __init__(self, speedup: float = 1.0) -> None:
        self.speedup = speedup
        self._start = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._start) * self.speedup

    async def sleep_until(self, t_s: float) -> None:
        # Always yield, even when behind: the HTTP handlers must get to run between engine steps.
        await asyncio.sleep(max(0.0, (t_s - self.now()) / self.speedup))


ABORTED = -1  # token-queue sentinel: the engine shut down under the request


class EngineShutDown(Exception):
    """The request was in flight when the server got SIGTERM."""


@dataclass
class _Pending:
    request: EngineRequest
    tokens: asyncio.Queue[int]  # token counts as they are produced; ABORTED when the engine shut down


class SimEngine:
    """Runs a BatchingEngine against the SimClock and hands tokens to the waiting HTTP handlers."""

    def __init__(self, engine: BatchingEngine, clock: SimClock, metrics: VllmMetrics) -> None:
        self.engine = engine
        self.clock = clock
        self.metrics = metrics
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, prompt_tokens: int, max_tokens: int) -> _Pending:
        request = EngineRequest(f"cmpl-{uuid.uuid4().hex}", prompt_tokens=prompt_tokens, max_output_tokens=max_tokens)
        pending = _Pending(request, asyncio.Queue())
        self._pending[request.request_id] = pending
        self.engine.submit(request, self.clock.now())
        self._wake.set()
        return pending

    def abort(self, pending: _Pending) -> None:
        """A client went away: drop its request wherever it is (vLLM counts it as finished_reason=abort)."""
        request = pending.request
        self._pending.pop(request.request_id, None)
        if request in self.engine.waiting:
            self.engine.waiting.remove(request)
        elif request in self.engine.running:
            self.engine.running.remove(request)
        else:
            return
        request.finished_s = self.clock.now()
        self.metrics.record_finished(request, "abort")

    def shut_down(self) -> int:
        """SIGTERM: every request in flight is aborted, as vLLM's engine shutdown does. Returns how many."""
        pending = list(self._pending.values())
        for item in pending:
            self.abort(item)
            item.tokens.put_nowait(ABORTED)
        return len(pending)

    async def _run(self) -> None:
        busy = False
        while True:
            if not self.engine.has_work():
                busy = False
                self._wake.clear()
                await self._wake.wait()
                continue
            # Back to back while busy (vLLM's loop never pauses with work queued); from idle, start now.
            start = self.engine.clock_s if busy else self.clock.now()
            result = self.engine.step(start)
            busy = True
            await self.clock.sleep_until(result.end_s)
            self._deliver(result)

    def _deliver(self, result: StepResult) -> None:
        self.metrics.record_step(result)
        for request, count in result.emitted:
            pending = self._pending.get(request.request_id)
            if pending:
                pending.tokens.put_nowait(count)
        for request in result.finished:
            self._pending.pop(request.request_id, None)


# --- HTTP -------------------------------------------------------------------------------------------------------


class BadRequest(Exception):
    pass


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.json_response(body, status=status)


def count_prompt_tokens(prompt: Any) -> int:
    """Prompt length in tokens: exact for token ids, estimated from characters for text."""
    if isinstance(prompt, str):
        return max(1, len(prompt) // CHARS_PER_TOKEN)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return count_prompt_tokens(prompt[0])
    raise BadRequest("prompt must be a string, a list of token ids, or a one-element list of either")


def count_chat_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    total = 0
    for message in messages:
        content = message.get("content", "") if isinstance(message, dict) else ""
        if isinstance(content, list):  # content parts: count the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += 4 + len(str(content)) // CHARS_PER_TOKEN  # role and template tokens around each message
    return total


class SimServer:
    """The aiohttp application of one simulated vLLM pod."""

    def __init__(self, options: argparse.Namespace, timing: StepTiming | None = None) -> None:
        self.options = options
        self.spec = spec_from_options(options)
        self.timing = timing or make_timing(self.spec, prefer_energy_model=not options.stub_timing)
        self.served_names: list[str] = options.served_model_name or [options.model]
        self.model_name = self.served_names[0]
        self.max_model_len: int = options.max_model_len
        self.clock = SimClock(options.speedup)
        self.metrics = VllmMetrics(self.model_name, self.max_model_len)
        engine = BatchingEngine(self.timing, options.max_num_seqs, options.max_num_batched_tokens)
        self.sim = SimEngine(engine, self.clock, self.metrics)
        pod = PodLabels(options.pod_namespace, options.pod_name, options.pod_container)
        seed = f"{options.pod_namespace}/{options.pod_name}/{options.port}"
        self.dcgm = DcgmMetrics(
            self.spec.gpu_type,
            self.spec.tensor_parallel,
            self.spec.gpu_memory_utilization,
            options.hostname or socket.gethostname(),
            pod,
            seed,
        )
        self.created = int(time.time())
        self.shutting_down = False

    def shut_down(self) -> int:
        """SIGTERM: refuse new requests and cancel those in flight."""
        self.shutting_down = True
        return self.sim.shut_down()

    @property
    def engine(self) -> BatchingEngine:
        return self.sim.engine

    def make_app(self, with_dcgm: bool = True) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics_all if with_dcgm else self.metrics_vllm)
        app.router.add_put("/wattkeeper/gpu-power-limit", self.set_power_limit)
        app.cleanup_ctx.append(self._engine_context)
        return app

    def make_dcgm_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_dcgm)
        return app

    async def _engine_context(self, _app: web.Application) -> AsyncIterator[None]:
        self.sim.start()
        yield
        await self.sim.stop()

    # --- simple endpoints ---

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def set_power_limit(self, request: web.Request) -> web.Response:
        """Simulator only: what the node agent's nvmlDeviceSetPowerManagementLimit does to a real pod's GPUs,
        in place (the fleet runner calls it when the pod's wattkeeper.io/gpu-power-limit-watts changes)."""
        setter = getattr(self.timing, "set_power_limit", None)
        if setter is None:
            return _error(501, "this timing has no power model (--stub-timing)", "NotImplementedError")
        try:
            body = await request.json()
            watts = body.get("watts")
            watts = None if watts is None else float(watts)
        except (ValueError, AttributeError, TypeError):
            return _error(400, 'expected {"watts": number or null}')
        limit = setter(watts)
        log.info("GPU power limit now %s", "the default" if limit is None else f"{limit:g} W")
        return web.json_response({"watts": limit})

    async def version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": "0.11.1", "simulator": f"wattkeeper-runtime {__version__}"})

    async def models(self, _request: web.Request) -> web.Response:
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.options.model,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [],
            }
            for name in self.served_names
        ]
        return web.json_response({"object": "list", "data": data})

    async def metrics_vllm(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(self.engine), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def metrics_dcgm(self, _request: web.Request) -> web.Response:
        body = self.dcgm.render(self.engine, self.clock.now())
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def metrics_all(self, _request: web.Request) -> web.Response:
        body = self.metrics.render(self.engine) + self.dcgm.render(self.engine, self.clock.now())
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    # --- generation ---

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _parse(self, body: Any, chat: bool) -> tuple[int, int, bool, bool]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        if chat:
            prompt_tokens = count_chat_tokens(body.get("messages"))
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        else:
            if "prompt" not in body:
                raise BadRequest("prompt is required")
            prompt_tokens = count_prompt_tokens(body["prompt"])
            max_tokens = body.get("max_tokens", 16)  # the OpenAI completions default
        if max_tokens is None:
            max_tokens = max(1, self.max_model_len - prompt_tokens)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("max_tokens must be a positive integer")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        if body.get("n", 1) != 1:
            raise BadRequest("the simulator serves n=1 only")
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage", False)) if isinstance(options, dict) else False
        return prompt_tokens, max_tokens, stream, include_usage

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON")
        try:
            prompt_tokens, max_tokens, stream, include_usage = self._parse(body, chat)
        except BadRequest as error:
            return _error(400, str(error))
        model = body.get("model")
        if model is not None and model not in self.served_names:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if self.shutting_down:
            return _error(503, "the server is shutting down", "ServiceUnavailableError")
        pending = self.sim.submit(prompt_tokens, max_tokens)
        try:
            if stream:
                return await self._stream(request, pending, chat, include_usage)
            return await self._complete(pending, chat)
        except (asyncio.CancelledError, ConnectionResetError):
            self.sim.abort(pending)
            raise
        except EngineShutDown:
            # No complete response: the connection is cut, as when vLLM's server task is cancelled.
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("engine shut down") from None

    def _usage(self, pending: _Pending, completion_tokens: int) -> dict[str, int]:
        prompt = pending.request.prompt_tokens
        total = prompt + completion_tokens
        return {"prompt_tokens": prompt, "total_tokens": total, "completion_tokens": completion_tokens}

    async def _complete(self, pending: _Pending, chat: bool) -> web.Response:
        count = 0
        while count < pending.request.max_output_tokens:
            count = await pending.tokens.get()
            if count == ABORTED:
                raise EngineShutDown
        text = FILLER_TOKEN * count
        rid = pending.request.request_id
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = "text_completion"
        body = {
            "id": rid if not chat else rid.replace("cmpl-", "chatcmpl-"),
            "object": obj,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": self._usage(pending, count),
        }
        return web.json_response(body)

    async def _stream(
        self, request: web.Request, pending: _Pending, chat: bool, include_usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        rid = pending.request.request_id if not chat else pending.request.request_id.replace("cmpl-", "chatcmpl-")
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        async def send(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": self.model_name}
            chunk["choices"] = choices
            if usage is not None:
                chunk["usage"] = usage
            await response.write(f"data: {_dumps(chunk)}\n\n".encode())

        if chat:
            role = {"role": "assistant", "content": ""}
            await send([{"index": 0, "delta": role, "logprobs": None, "finish_reason": None}])
        count, total = 0, pending.request.max_output_tokens
        while count < total:
            new_count = await pending.tokens.get()
            if new_count == ABORTED:
                raise EngineShutDown
            for produced in range(count + 1, new_count + 1):
                last = produced == total
                reason = "length" if last else None
                if chat:
                    choice = {"index": 0, "delta": {"content": FILLER_TOKEN}, "logprobs": None, "finish_reason": reason}
                else:
                    choice = {"index": 0, "text": FILLER_TOKEN, "logprobs": None, "finish_reason": reason}
                await send([choice])
            count = new_count
        if include_usage:
            await send([], self._usage(pending, count))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


async def serve(options: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever)."""
    server = SimServer(options)
    separate_dcgm = options.dcgm_port is not None
    # No graceful wait on shutdown: vLLM does not wait for its requests either (see the module docstring).
    runner = web.AppRunner(server.make_app(with_dcgm=not separate_dcgm), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, options.host, options.port).start()
    dcgm_runner: web.AppRunner | None = None
    if separate_dcgm:
        dcgm_runner = web.AppRunner(server.make_dcgm_app(), access_log=None)
        await dcgm_runner.setup()
        await web.TCPSite(dcgm_runner, options.host, options.dcgm_port).start()
    log.info(
        "simulating %s (%s, tp %d, %s) on http://%s:%d, speedup %g, timing %s",
        server.model_name,
        server.spec.precision,
        server.spec.tensor_parallel,
        server.spec.gpu_type,
        options.host,
        options.port,
        options.speedup,
        type(server.timing).__name__,
    )
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
        cancelled = server.shut_down()
        if cancelled:
            log.warning("SIGTERM with %d request(s) in flight: cancelled, as vLLM does", cancelled)
        await asyncio.sleep(0)  # let the handlers see the abort and cut their connections
    finally:
        if dcgm_runner:
            await dcgm_runner.cleanup()
        await runner.cleanup()


def run(argv: Sequence[str]) -> int:
    """Entry point of `wattkeeper-runtime sim`."""
    options = parse_sim_args(argv)

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, stop)

    asyncio.run(main())
    return 0
