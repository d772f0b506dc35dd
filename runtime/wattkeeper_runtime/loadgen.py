"""The load generator: replays a request trace against a service's simulator (or vLLM) endpoints.

Trace format: Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`). By default the
conversation trace from the shared data folder (`wattkeeper.energy.datasets.shared_data_dir()`), else a synthetic
diurnal trace. Arrival offsets are divided by `speedup * rate_scale`: speedup matches a simulator's --speedup (the
whole scenario runs faster), rate_scale raises or lowers the load itself.

Every request is a /v1/completions call (streaming unless `stream=False`) with the trace's prompt length (as token ids, so the count is
exact) and output length (`max_tokens`, `ignore_eos`), sent to the service's endpoints from the fleet registry,
round-robin or to the endpoint with the fewest requests in flight. Latencies in the summary are multiplied by
`speedup`, i.e. reported in the simulated time the metrics use. They are what the client saw: on a loaded machine
at a high speedup the client's own scheduling delays show up in them (ITL most), while the simulators' vLLM
histograms, kept in virtual time, stay exact. Loopback endpoints only: this is a test tool.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

AZURE_CONV_RELATIVE = Path("traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TraceRequest:
    offset_s: float  # since the first request of the trace
    prompt_tokens: int
    output_tokens: int


def _parse_timestamp(text: str) -> float:
    # Azure writes 7 fractional digits; Python's %f takes 6.
    head, _, fraction = text.strip().partition(".")
    stamp = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return stamp + (float(f"0.{fraction}") if fraction else 0.0)


def read_azure_trace(path: Path) -> list[TraceRequest]:
    rows: list[TraceRequest] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        start: float | None = None
        for row in reader:
            stamp = _parse_timestamp(row["TIMESTAMP"])
            start = stamp if start is None else start
            rows.append(TraceRequest(stamp - start, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    rows.sort(key=lambda r: r.offset_s)
    return rows


def synthetic_diurnal_trace(
    duration_s: float = 3600.0,
    mean_rate_per_s: float = 5.0,
    period_s: float = 3600.0,
    amplitude: float = 0.6,
    seed: int = 0,
) -> list[TraceRequest]:
    """Poisson arrivals whose rate follows a day-like sine, with conversation-like token counts.

    Rate(t) = mean * (1 - amplitude * cos(2 pi t / period)): quiet at the start, busiest mid-period. Sampled by
    thinning a Poisson process at the peak rate. Prompt and output lengths are log-normal around the Azure
    conversation trace's medians (about 1000 and 250 tokens).
    """
    rng = random.Random(seed)
    peak = mean_rate_per_s * (1 + amplitude)
    rows: list[TraceRequest] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            return rows
        rate = mean_rate_per_s * (1 - amplitude * math.cos(2 * math.pi * t / period_s))
        if rng.random() * peak <= rate:
            prompt = max(1, min(8000, int(rng.lognormvariate(math.log(1000), 0.8))))
            output = max(1, min(2000, int(rng.lognormvariate(math.log(250), 0.7))))
            rows.append(TraceRequest(t, prompt, output))


def default_trace_path() -> Path | None:
    try:
        from wattkeeper.energy.datasets import shared_data_dir
    except ImportError:
        return None
    base = shared_data_dir()
    if base is None:
        return None
    path = Path(base) / AZURE_CONV_RELATIVE
    return path if path.exists() else None


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    pod: str = ""


def load_endpoints(registry_path: Path, service: str) -> list[Endpoint]:
    """A service's endpoints from the fleet registry; `service` is `name` or `namespace/name`."""
    data = json.loads(registry_path.read_text())
    namespace, _, name = service.rpartition("/")
    entries = data.get("services", {}).get(name, [])
    return [
        Endpoint(url=e["url"], model=e.get("model", ""), pod=e.get("pod", ""))
        for e in entries
        if not namespace or e.get("namespace") == namespace
    ]


def check_loopback(endpoints: Sequence[Endpoint]) -> None:
    for endpoint in endpoints:
        host = urlsplit(endpoint.url).hostname or ""
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"refusing non-loopback endpoint {endpoint.url}: the load generator is a local test tool")


class Balancer:
    """Round-robin, or least outstanding requests (ties broken round-robin)."""

    def __init__(self, endpoints: Sequence[Endpoint], policy: str = "least-outstanding") -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        if policy not in ("round-robin", "least-outstanding"):
            raise ValueError(f"unknown policy {policy!r}")
        self.endpoints = list(endpoints)
        self.policy = policy
        self.outstanding = dict.fromkeys(range(len(self.endpoints)), 0)
        self.live = {e.url for e in self.endpoints}
        self._turn = itertools.count()

    def acquire(self) -> int:
        live = [i for i, e in enumerate(self.endpoints) if e.url in self.live] or list(range(len(self.endpoints)))
        start = next(self._turn)
        if self.policy == "round-robin":
            index = live[start % len(live)]
        else:
            order = [live[(start + i) % len(live)] for i in range(len(live))]
            index = min(order, key=lambda i: self.outstanding[i])
        self.outstanding[index] += 1
        return index

    def release(self, index: int) -> None:
        self.outstanding[index] -= 1

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Follow the fleet as replicas come and go; indexes of requests in flight stay valid."""
        known = {e.url for e in self.endpoints}
        for endpoint in endpoints:
            if endpoint.url not in known:
                self.endpoints.append(endpoint)
                self.outstanding[len(self.endpoints) - 1] = 0
        self.live = {e.url for e in endpoints}


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    sent: int
    ok: int
    errors: int
    duration_s: float
    output_tokens: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None
    itl_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p90_s: float | None
    per_endpoint: dict[str, int]
    first_errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    results: Sequence[RequestResult], duration_s: float, per_endpoint: dict[str, int], scale: float
) -> Summary:
    ttfts = [r.ttft_s * scale for r in results if r.ok and r.ttft_s is not None]
    itls = [x * scale for r in results if r.ok for x in r.itl_s]
    e2es = [r.e2e_s * scale for r in results if r.ok and r.e2e_s is not None]
    ok = sum(1 for r in results if r.ok)
    return Summary(
        sent=len(results),
        ok=ok,
        errors=len(results) - ok,
        duration_s=duration_s,
        output_tokens=sum(r.output_tokens for r in results),
        ttft_p50_s=_percentile(ttfts, 0.5),
        ttft_p90_s=_percentile(ttfts, 0.9),
        ttft_p99_s=_percentile(ttfts, 0.99),
        itl_p50_s=_percentile(itls, 0.5),
        itl_p90_s=_percentile(itls, 0.9),
        itl_p99_s=_percentile(itls, 0.99),
        e2e_p50_s=_percentile(e2es, 0.5),
        e2e_p90_s=_percentile(e2es, 0.9),
        per_endpoint=per_endpoint,
        first_errors=[r.error for r in results if not r.ok][:5],
    )


async def send_one(
    client: httpx.AsyncClient, endpoint: Endpoint, request: TraceRequest, stream: bool = True
) -> RequestResult:
    body = {
        "model": endpoint.model,
        "prompt": [0] * request.prompt_tokens,  # token ids: an exact prompt length at a few bytes per token
        "max_tokens": request.output_tokens,
        "ignore_eos": True,  # vLLM extension: generate exactly max_tokens, as the trace did
        "stream": stream,
    }
    start = time.monotonic()
    result = RequestResult(ok=False)
    try:
        if stream:
            await _read_stream(client, endpoint, body, start, result)
        else:
            response = await client.post(f"{endpoint.url}/v1/completions", json=body)
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return result
            result.output_tokens = int(response.json().get("usage", {}).get("completion_tokens", 0))
        result.e2e_s = time.monotonic() - start
        result.ok = not result.error
    except (httpx.HTTPError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


async def _read_stream(
    client: httpx.AsyncClient, endpoint: Endpoint, body: dict[str, Any], start: float, result: RequestResult
) -> None:
    last: float | None = None
    async with client.stream("POST", f"{endpoint.url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")[:200]
            result.error = f"HTTP {response.status_code}: {text}"
            return
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if not chunk.get("choices"):
                continue  # the usage chunk
            now = time.monotonic()
            if last is None:
                result.ttft_s = now - start
            else:
                result.itl_s.append(now - last)
            last = now
            result.output_tokens += 1
        if not done:
            result.error = f"stream ended after {result.output_tokens} token(s) without [DONE]"


async def replay(
    trace: Sequence[TraceRequest],
    endpoints: Sequence[Endpoint],
    speedup: float = 1.0,
    rate_scale: float = 1.0,
    max_requests: int | None = None,
    max_duration_s: float | None = None,
    policy: str = "least-outstanding",
    timeout_s: float = 600.0,
    stream: bool = True,
    refresh: Callable[[], Sequence[Endpoint]] | None = None,
    refresh_every_s: float = 2.0,
) -> Summary:
    """Send the trace's requests at their (scaled) times; wait for the ones in flight at the end.

    `refresh` re-reads the endpoints (the fleet registry) every `refresh_every_s`, so scaling and rollouts
    get traffic."""
    check_loopback(endpoints)
    if speedup <= 0 or rate_scale <= 0:
        raise ValueError("speedup and rate_scale must be > 0")
    balancer = Balancer(endpoints, policy)
    per_endpoint = {e.url: 0 for e in endpoints}
    results: list[RequestResult] = []
    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as client:

        async def run(request: TraceRequest) -> None:
            index = balancer.acquire()
            per_endpoint[balancer.endpoints[index].url] += 1
            try:
                results.append(await send_one(client, balancer.endpoints[index], request, stream))
            finally:
                balancer.release(index)

        refreshed_at = time.monotonic()
        for count, request in enumerate(trace):
            if max_requests is not None and count >= max_requests:
                break
            if refresh is not None and time.monotonic() - refreshed_at >= refresh_every_s:
                refreshed_at = time.monotonic()
                fresh = list(refresh())
                if fresh:
                    check_loopback(fresh)
                    balancer.update(fresh)
                    for e in fresh:
                        per_endpoint.setdefault(e.url, 0)
            due = request.offset_s / (speedup * rate_scale)
            if max_duration_s is not None and due > max_duration_s:
                break
            delay = due - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run(request)))
        if tasks:
            await asyncio.gather(*tasks)
    return summarise(results, time.monotonic() - start, per_endpoint, scale=speedup)

