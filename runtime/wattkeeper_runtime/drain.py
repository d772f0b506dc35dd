"""`wattkeeper-runtime drain`: the vLLM container's preStop hook; it returns once the server's requests are done.

Why: on SIGTERM vLLM 0.11.1 does not drain. Its handler cancels the HTTP server task
(vllm/entrypoints/launcher.py:84-95) and leaves the engine context, which shuts the engine down with the requests in
flight (vllm/entrypoints/openai/api_server.py:252-254), before the HTTP server's own shutdown is awaited
(api_server.py:2043-2079). So the kubelet must not send SIGTERM while requests run. It runs the preStop hook first
and sends SIGTERM after it, all within terminationGracePeriodSeconds (kubelet kuberuntime_container.go:894). A
terminating pod is already out of its Service's ready endpoints (k8s.io/endpointslice utils.go:39-43: ready is false
while terminating), so no new requests arrive once the endpoint change has propagated.

The hook: wait `--settle` seconds (endpoint propagation to kube-proxy and load balancers; requests still arriving
are served), then poll vLLM's /metrics until `vllm:num_requests_running` + `vllm:num_requests_waiting` (summed
over all series) is zero on `--quiet-polls` polls in a row, or `--timeout` passes (set below the grace period so
vLLM still gets its SIGTERM in time). An unreachable server has nothing in flight: the hook returns at once.

Standard library only, and runnable as a script: the operator puts this file's source into the preStop command
(`python3 -c SOURCE --port N ...`) so that it runs in the stock vllm/vllm-openai image, which has python3 but not
Wattkeeper.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

IN_FLIGHT_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def in_flight_requests(metrics_text: str) -> float:
    """Requests running plus waiting, summed over every series (one per model name and engine)."""
    total = 0.0
    for line in metrics_text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in IN_FLIGHT_METRICS:
            # `name{labels} value [timestamp]`; label values may hold spaces, so split after the closing brace.
            rest = line[line.rindex("}") + 1 :] if "{" in line else line[len(name) :]
            total += float(rest.split()[0])
    return total


def fetch_metrics(url: str, timeout_s: float = 2.0) -> str:
    # No proxies: the pod's HTTP(S)_PROXY must not route a loopback call elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")


def drain(
    metrics_url: str,
    timeout_s: float,
    settle_s: float = 5.0,
    poll_s: float = 1.0,
    quiet_polls: int = 2,
    fetch: Callable[[str], str] = fetch_metrics,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> str:
    """Block until nothing is in flight (or the timeout); returns why it stopped: idle, unreachable, timeout."""
    deadline = clock() + timeout_s
    sleep(max(0.0, min(settle_s, deadline - clock())))
    quiet = 0
    while True:
        try:
            count = in_flight_requests(fetch(metrics_url))
        except (OSError, ValueError, urllib.error.URLError) as error:
            log(f"drain: {metrics_url} unreachable ({error}): nothing to wait for")
            return "unreachable"
        quiet = quiet + 1 if count == 0 else 0
        if quiet >= quiet_polls:
            log("drain: no requests in flight")
            return "idle"
        if clock() >= deadline:
            log(f"drain: {count:g} request(s) still in flight after {timeout_s:g}s; leaving them to SIGTERM")
            return "timeout"
        sleep(max(0.0, min(poll_s, deadline - clock())))


def script_source() -> str:
    """This module as a standalone script for `python3 -c` (docstring left out: the pod spec stays short)."""
    text = Path(__file__).read_text()
    body = text.split('"""', 2)[2] if text.startswith('"""') else text
    return "# wattkeeper-runtime drain (preStop)" + body


def add_drain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8000, help="vLLM's port in this pod (default 8000)")
    parser.add_argument("--url", default=None, help="metrics URL instead of http://127.0.0.1:PORT/metrics")
    parser.add_argument("--timeout", type=float, default=25.0, help="give up after this many seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="first wait, for endpoint removal to spread")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--quiet-polls", type=int, default=2, help="polls in a row with nothing in flight")


def run(options: argparse.Namespace) -> int:
    url = options.url or f"http://127.0.0.1:{options.port}/metrics"
    drain(url, options.timeout, options.settle, options.poll, options.quiet_polls)
    return 0  # a preStop hook's failure only makes an event; the kubelet sends SIGTERM either way


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wattkeeper-runtime drain", description="wait until vLLM is idle")
    add_drain_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
