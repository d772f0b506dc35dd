"""The preStop drain and the simulator's SIGTERM: without the drain SIGTERM cancels requests (as vLLM 0.11.1 does);
with it, every request completes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer
from wattkeeper_runtime.drain import drain, in_flight_requests
from wattkeeper_runtime.loadgen import Endpoint, TraceRequest, send_one
from wattkeeper_runtime.sim import SimServer, parse_sim_args
from wattkeeper_runtime.timing import LinearStubTiming

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a b"} 3.0
vllm:num_requests_running{engine="1",model_name="a b"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a b"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 7.0
vllm:num_requests_swapped 9
"""


def test_in_flight_sums_running_and_waiting_over_series() -> None:
    assert in_flight_requests(METRICS) == 6.0
    assert in_flight_requests("vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n") == 0.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run_drain(counts: list[float | None], timeout_s: float = 30.0) -> tuple[str, FakeClock, int]:
    clock = FakeClock()
    calls = iter(counts)
    polled = 0

    def fetch(_url: str) -> str:
        nonlocal polled
        polled += 1
        count = next(calls, 0.0)
        if count is None:
            raise OSError("connection refused")
        return f"vllm:num_requests_running{{model_name=\"m\"}} {count}\nvllm:num_requests_waiting 0\n"

    why = drain("http://x/metrics", timeout_s, settle_s=5, poll_s=1, quiet_polls=2, fetch=fetch,
                sleep=clock.sleep, clock=lambda: clock.now, log=lambda _t: None)  # fmt: skip
    return why, clock, polled


def test_drain_settles_then_waits_for_two_idle_polls() -> None:
    why, clock, polled = run_drain([4, 3, 0, 1, 0, 0])
    assert why == "idle" and polled == 6
    assert clock.sleeps[0] == 5  # endpoint removal spreads first; requests still arriving are served


def test_drain_gives_up_at_its_timeout() -> None:
    why, clock, _ = run_drain([5] * 100, timeout_s=12)
    assert why == "timeout" and clock.now == pytest.approx(12)


def test_drain_returns_at_once_when_the_server_is_gone() -> None:
    why, clock, polled = run_drain([None])
    assert why == "unreachable" and polled == 1 and clock.now == 5


def test_drain_as_a_script_in_an_image_without_wattkeeper() -> None:
    """The preStop runs `python3 -c SOURCE`: the module must work with the standard library alone."""
    from wattkeeper.render.objects import prestop_drain_command

    command = prestop_drain_command(port=1, timeout_s=3)
    assert command[:2] == ["python3", "-c"]
    done = subprocess.run([sys.executable, "-I", "-c", *command[2:]], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "unreachable" in done.stderr  # nothing listens on port 1


# --- the simulator on SIGTERM ------------------------------------------------------------------------------------


def _with_sim(body: Any) -> None:
    async def main() -> None:
        # Slow enough that requests are in flight for a while: 20 ms per step at speedup 1.
        server = SimServer(parse_sim_args([MODEL, "--served-model-name", "m", "--stub-timing"]),
                           timing=LinearStubTiming())  # fmt: skip
        async with TestClient(TestServer(server.make_app())) as client:
            await body(str(client.make_url("")).rstrip("/"), server)

    asyncio.run(main())


def test_sigterm_cancels_requests_in_flight_as_vllm_does() -> None:
    async def body(url: str, server: SimServer) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            endpoint = Endpoint(url, "m")
            requests = [TraceRequest(0.0, 100, 200) for _ in range(4)]
            tasks = [asyncio.create_task(send_one(client, endpoint, r, stream)) for r, stream
                     in zip(requests, (True, True, False, False), strict=True)]  # fmt: skip
            await asyncio.sleep(0.3)
            assert server.shut_down() == 4
            results = await asyncio.gather(*tasks)
            assert [r.ok for r in results] == [False] * 4, results
            refused = await send_one(client, endpoint, TraceRequest(0.0, 10, 5), stream=False)
            assert not refused.ok and "503" in refused.error

    _with_sim(body)


def test_drain_before_sigterm_completes_every_request() -> None:
    async def body(url: str, server: SimServer) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            endpoint = Endpoint(url, "m")
            tasks = [asyncio.create_task(send_one(client, endpoint, TraceRequest(0.0, 100, 60), i % 2 == 0))
                     for i in range(6)]  # fmt: skip
            await asyncio.sleep(0.2)
            why = await asyncio.to_thread(drain, f"{url}/metrics", 30.0, 0.1, 0.1, 2, log=lambda _t: None)
            assert why == "idle"
            assert server.shut_down() == 0
            results = await asyncio.gather(*tasks)
            assert all(r.ok for r in results), [r.error for r in results]
            assert sum(r.output_tokens for r in results) == 6 * 60

    _with_sim(body)
