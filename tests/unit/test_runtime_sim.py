"""The simulator: vllm serve's arguments, the OpenAI API, and /metrics with vLLM's and DCGM's names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from wattkeeper_runtime.engine import EngineRequest
from wattkeeper_runtime.loadgen import Endpoint, TraceRequest, replay
from wattkeeper_runtime.sim import SimServer, params_from_name, parse_sim_args, precision_of
from wattkeeper_runtime.simmetrics import VllmMetrics, mean_itl_seconds
from wattkeeper_runtime.timing import LinearStubTiming

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAST = ["--speedup", "50", "--stub-timing"]


def run_with_client(argv: list[str], body: Callable[[TestClient[Any, Any], SimServer], Awaitable[None]]) -> None:
    async def main() -> None:
        server = SimServer(parse_sim_args(argv), timing=LinearStubTiming())
        async with TestClient(TestServer(server.make_app())) as client:
            await body(client, server)

    asyncio.run(main())


def test_accepts_vllm_serve_arguments_and_ignores_unknown_ones(caplog: pytest.LogCaptureFixture) -> None:
    options = parse_sim_args(
        [MODEL, "--tensor-parallel-size", "2", "--max-num-seqs", "64", "--max-num-batched-tokens", "4096",
         "--quantization", "fp8", "--dtype", "bfloat16", "--kv-cache-dtype", "fp8", "--gpu-memory-utilization",
         "0.85", "--port", "8123", "--host", "127.0.0.1", "--served-model-name", "llama",
         "--enable-prefix-caching", "--swap-space", "4", "--pod-namespace", "ns", "--pod-name", "p"]
    )  # fmt: skip
    assert options.model == MODEL and options.tensor_parallel_size == 2 and options.max_num_seqs == 64
    assert options.quantization == "fp8" and options.served_model_name == ["llama"] and options.port == 8123
    assert "--enable-prefix-caching" in caplog.text
    assert parse_sim_args(["--model", MODEL]).model == MODEL


def test_model_size_and_precision_from_names() -> None:
    assert params_from_name("meta-llama/Llama-3.1-8B-Instruct") == (8.0, None)
    assert params_from_name("Qwen/Qwen3-30B-A3B") == (30.0, 3.0)
    assert params_from_name("openai/gpt-oss-120b") == (120.0, None)
    assert precision_of("fp8", "auto", MODEL) == "fp8"
    assert precision_of("awq_marlin", "auto", MODEL) == "int4-awq"
    assert precision_of(None, "auto", "RedHatAI/Llama-3.1-8B-Instruct-FP8-dynamic") == "fp8"
    assert precision_of(None, "float16", MODEL) == "fp16"
    assert precision_of(None, "bfloat16", MODEL) == "bf16"


def test_completions_chat_models_health() -> None:
    async def body(client: TestClient[Any, Any], _server: SimServer) -> None:
        assert (await client.get("/health")).status == 200
        models = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["llama"]

        response = await client.post("/v1/completions", json={"model": "llama", "prompt": "x" * 400, "max_tokens": 7})
        data = await response.json()
        assert response.status == 200 and data["object"] == "text_completion"
        assert data["usage"] == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}
        assert data["choices"][0]["finish_reason"] == "length"

        response = await client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2})
        assert (await response.json())["usage"]["prompt_tokens"] == 3

        chat = {"model": "llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
        data = await (await client.post("/v1/chat/completions", json=chat)).json()
        assert data["object"] == "chat.completion" and data["usage"]["completion_tokens"] == 3
        assert data["choices"][0]["message"]["role"] == "assistant"

        assert (await client.post("/v1/completions", json={"model": "other", "prompt": "a"})).status == 404
        assert (await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 0})).status == 400
        assert (await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 10**6})).status == 400
        assert (await client.post("/v1/completions", data=b"{not json")).status == 400

    run_with_client([MODEL, "--served-model-name", "llama", *FAST], body)


def test_streaming_sse() -> None:
    async def body(client: TestClient[Any, Any], _server: SimServer) -> None:
        request = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await client.post("/v1/chat/completions", json=request)
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line[6:] for line in (await response.text()).splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert contents[0] == "" and len(contents) == 6  # the role chunk, then one chunk per token
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 5

        response = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True})
        events = [line[6:] for line in (await response.text()).splitlines() if line.startswith("data: ")]
        assert len(events) == 4 and json.loads(events[0])["object"] == "text_completion"

    run_with_client([MODEL, *FAST], body)


def _samples(text: str) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            names.setdefault(name, []).append(line)
    return names


def test_metrics_names_and_labels() -> None:
    async def body(client: TestClient[Any, Any], server: SimServer) -> None:
        await asyncio.gather(
            *(client.post("/v1/completions", json={"prompt": "x" * 800, "max_tokens": 10}) for _ in range(4))
        )
        # The energy counter advances with the wall clock: bracket the scrape between two readings (one reading
        # after it drifted past 5% under a loaded CI machine).
        before_j = server.engine.energy_joules_at(server.clock.now())
        text = await (await client.get("/metrics")).text()
        after_j = server.engine.energy_joules_at(server.clock.now())
        samples = _samples(text)
        for name in (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:request_success_total",
            "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket",
            "vllm:time_per_output_token_seconds_bucket",
            "vllm:request_time_per_output_token_seconds_bucket",
            "vllm:e2e_request_latency_seconds_count",
            "vllm:request_queue_time_seconds_sum",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_FB_USED",
        ):
            assert name in samples, name
        assert 'vllm:generation_tokens_total{engine="0",model_name="m"} 40.0' in text
        assert 'vllm:prompt_tokens_total{engine="0",model_name="m"} 800.0' in text
        assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 4.0' in text
        assert 'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0' in text
        # Once per finished request (vLLM 0.11.1 loggers.py:1080), with the request's mean ITL.
        assert 'vllm:request_time_per_output_token_seconds_count{engine="0",model_name="m"} 4.0' in text
        # Each request's 9 gaps after its first token, averaged: 9x the sum of the means is the sum of the gaps.
        def total(name: str) -> float:
            return float(samples[name][0].rsplit(" ", 1)[1])

        request_itl_sum = total("vllm:request_time_per_output_token_seconds_sum")
        assert request_itl_sum > 0
        assert 9 * request_itl_sum == pytest.approx(total("vllm:inter_token_latency_seconds_sum"))
        assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
        power = samples["DCGM_FI_DEV_POWER_USAGE"]
        assert len(power) == 2  # one series per GPU of the TP group
        assert 'namespace="team-a"' in power[0] and 'pod="llama-0"' in power[0] and 'container="vllm"' in power[0]
        assert 'modelName="NVIDIA H100 80GB HBM3"' in power[0] and 'gpu="1"' in power[1]
        energy_mj = float(samples["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][0].rsplit(" ", 1)[1])
        # Per GPU of the TP group, in whole mJ (DCGM's unit; the exporter truncates).
        assert before_j * 1000 / 2 - 1 <= energy_mj <= after_j * 1000 / 2

    argv = [MODEL, "--served-model-name", "m", "-tp", "2", "--pod-namespace", "team-a", "--pod-name", "llama-0", *FAST]
    run_with_client(argv, body)


def test_load_generator_against_a_live_simulator() -> None:
    async def body(client: TestClient[Any, Any], _server: SimServer) -> None:
        url = str(client.make_url("")).rstrip("/")
        trace = [TraceRequest(offset_s=i * 0.05, prompt_tokens=200, output_tokens=8) for i in range(12)]
        summary = await replay(trace, [Endpoint(url, "llama")], speedup=50, max_requests=10)
        assert summary.sent == 10 and summary.ok == 10 and summary.errors == 0
        assert summary.output_tokens == 80
        assert summary.ttft_p50_s is not None and summary.itl_p50_s is not None and summary.itl_p50_s > 0

    run_with_client([MODEL, "--served-model-name", "llama", *FAST], body)


def test_power_limit_changes_in_place_within_the_cards_range() -> None:
    """What the node agent does to a real pod's GPUs, the simulator does on PUT /wattkeeper/gpu-power-limit."""

    async def main() -> None:
        server = SimServer(parse_sim_args([MODEL, "--speedup", "50"]))
        async with TestClient(TestServer(server.make_app())) as client:
            full = server.timing.power_watts(256, 1.0)
            response = await client.put("/wattkeeper/gpu-power-limit", json={"watts": 400})
            assert response.status == 200 and (await response.json()) == {"watts": 400.0}
            assert server.timing.power_watts(256, 1.0) <= 400.0 < full
            assert (await (await client.put("/wattkeeper/gpu-power-limit", json={"watts": 50})).json()) == \
                {"watts": 200.0}  # the H100's minimum
            assert (await (await client.put("/wattkeeper/gpu-power-limit", json={"watts": None})).json()) == \
                {"watts": None}
            assert server.timing.power_watts(256, 1.0) == pytest.approx(full)
            assert (await client.put("/wattkeeper/gpu-power-limit", json={"watts": "lots"})).status == 400

    asyncio.run(main())


def test_each_finished_request_is_observed_once_with_its_mean_itl() -> None:
    metrics = VllmMetrics("m", 4096)
    # 11 tokens, the first at 2 s and the last at 3 s: 10 gaps after the first token (vLLM stats.py:331-342).
    long = EngineRequest("a", 100, 11, output_tokens=11, first_token_s=2.0, last_token_s=3.0, finished_s=3.0)
    one = EngineRequest("b", 100, 1, output_tokens=1, first_token_s=2.0, last_token_s=2.0, finished_s=2.0)
    unstarted = EngineRequest("c", 100, 50, finished_s=4.0)  # aborted while queued
    assert mean_itl_seconds(long) == pytest.approx(0.1)
    assert mean_itl_seconds(one) == 0.0 and mean_itl_seconds(unstarted) == 0.0  # vLLM observes 0 then
    metrics.record_finished(long, "length")
    metrics.record_finished(one, "stop")
    metrics.record_finished(unstarted, "abort")
    text = generate_latest(metrics.registry).decode()
    series = 'engine="0",model_name="m"'
    assert "# HELP vllm:request_time_per_output_token_seconds Histogram of time_per_output_token_seconds per request." in text
    assert f"vllm:request_time_per_output_token_seconds_count{{{series}}} 3.0" in text
    assert 'vllm:request_time_per_output_token_seconds_bucket{engine="0",le="0.01",model_name="m"} 2.0' in text
    assert 'vllm:request_time_per_output_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 3.0' in text
    bounds = [line.split('le="', 1)[1].split('"', 1)[0] for line in text.splitlines()
              if line.startswith("vllm:request_time_per_output_token_seconds_bucket")]
    # vLLM 0.11.1 v1/metrics/loggers.py:802-830.
    assert bounds == ["0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.75", "1.0",
                      "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "+Inf"]


def test_ttft_is_observed_at_the_first_token_and_token_lengths_at_the_finish() -> None:
    """As vLLM 0.11.1: TTFT in the step that gives a request its first token (v1/metrics/stats.py:251-255,
    loggers.py:1049-1050), so its _count counts requests started (the operator's arrival counts); the prompt and
    generation lengths once the request finishes (loggers.py:1074-1079)."""
    from wattkeeper_runtime.engine import BatchingEngine

    metrics = VllmMetrics("m", 4096)
    engine = BatchingEngine(LinearStubTiming(), max_num_seqs=8, max_num_batched_tokens=8192)
    engine.submit(EngineRequest("a", prompt_tokens=100, max_output_tokens=10), 0.0)
    series = 'engine="0",model_name="m"'

    def count(name: str) -> float:
        line = next(x for x in generate_latest(metrics.registry).decode().splitlines() if x.startswith(f"{name}{{"))
        return float(line.rsplit(" ", 1)[1])

    metrics.record_step(engine.step(engine.clock_s))  # the prefill: the first token
    assert count("vllm:time_to_first_token_seconds_count") == 1.0
    assert count("vllm:request_success_total") == 0.0 and count("vllm:request_prompt_tokens_count") == 0.0
    while engine.has_work():
        metrics.record_step(engine.step(engine.clock_s))
    text = generate_latest(metrics.registry).decode()
    assert count("vllm:time_to_first_token_seconds_count") == 1.0  # once per request, not per token
    assert f"vllm:request_prompt_tokens_count{{{series}}} 1.0" in text
    assert f"vllm:request_generation_tokens_count{{{series}}} 1.0" in text
    assert 'vllm:request_prompt_tokens_bucket{engine="0",le="100.0",model_name="m"} 1.0' in text
    assert 'vllm:request_generation_tokens_bucket{engine="0",le="5.0",model_name="m"} 0.0' in text
    assert 'vllm:request_generation_tokens_bucket{engine="0",le="10.0",model_name="m"} 1.0' in text
