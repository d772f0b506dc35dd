"""A test exporter serving dcgm-exporter- and vLLM-format metrics for a service's real pods.

Each scrape lists the service's Running pods from the API server and serves per pod what the test set: power,
token and request rates (as counters that grow with time), queue gauges and latency histograms. Prometheus scrapes
it with honor_labels, so the series carry the pods' own namespace and pod labels, as dcgm-exporter's do.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client


@dataclass
class ServiceLoad:
    watts_per_pod: float = 400.0
    tokens_per_second: float = 0.0  # whole service, output tokens
    requests_per_second: float = 0.0
    prompt_tokens_per_request: float = 1024.0
    ttft_p95_seconds: float = 0.2
    itl_p95_seconds: float = 0.02
    # p95 of requests' mean ITL (vllm:request_time_per_output_token_seconds); None: the same as itl_p95_seconds,
    # so a test that sets a slow ITL sees it on both histograms.
    request_itl_p95_seconds: float | None = None
    running: float = 0.0
    waiting: float = 0.0
    silent: bool = False  # serve nothing: telemetry gone


@dataclass
class _Counters:
    at: float = field(default_factory=time.time)
    energy_mj: float = 0.0
    tokens: float = 0.0
    prompt: float = 0.0
    requests: float = 0.0


class FakeFleetExporter:
    def __init__(self, api_client: client.ApiClient, port: int = 0) -> None:
        self.core = client.CoreV1Api(api_client)
        self.loads: dict[tuple[str, str], ServiceLoad] = {}
        self.counters: dict[str, _Counters] = {}
        self.lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeFleetExporter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()

    def set(self, namespace: str, service: str, load: ServiceLoad) -> None:
        with self.lock:
            self.loads[(namespace, service)] = load

    def _pods(self, namespace: str, service: str) -> list[str]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"wattkeeper.io/service={service}").items
        return [p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]

    def render(self) -> str:
        # The counters advance to one instant and carry it as their sample timestamp (Prometheus keeps it:
        # honor_timestamps defaults to true). Left to Prometheus, the stamp is when the scrape began, and under CPU
        # load the handler runs up to a second later: a steady 110 W read as 101 W over a 5-s window, a status
        # write that a converged service should not make.
        now = time.time()
        with self.lock:
            loads = dict(self.loads)
        lines: list[str] = []
        for (namespace, service), load in loads.items():
            if load.silent:
                continue
            pods = self._pods(namespace, service)
            n = max(len(pods), 1)
            for pod in pods:
                lines += self._pod_lines(namespace, pod, load, n, now)
        return "\n".join(lines) + "\n"

    def _pod_lines(self, namespace: str, pod: str, load: ServiceLoad, n: int, now: float) -> list[str]:
        c = self.counters.setdefault(f"{namespace}/{pod}", _Counters(at=now))
        dt = max(now - c.at, 0.0)
        c.at = max(c.at, now)
        c.energy_mj += load.watts_per_pod * dt * 1000
        c.tokens += load.tokens_per_second / n * dt
        c.requests += load.requests_per_second / n * dt
        c.prompt += load.requests_per_second / n * load.prompt_tokens_per_request * dt
        stamp = f" {round(now * 1000)}"  # exposition format: milliseconds since the epoch
        pl = f'namespace="{namespace}",pod="{pod}"'
        gpu = f'gpu="0",UUID="GPU-{pod}",modelName="NVIDIA H100 80GB HBM3",container="vllm",{pl}'
        vl = f'model_name="m",engine="0",{pl}'
        out = [
            f"DCGM_FI_DEV_POWER_USAGE{{{gpu}}} {load.watts_per_pod}",
            f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{gpu}}} {c.energy_mj:.0f}{stamp}",
            f"vllm:generation_tokens_total{{{vl}}} {c.tokens}{stamp}",
            f"vllm:prompt_tokens_total{{{vl}}} {c.prompt}{stamp}",
            f'vllm:request_success_total{{finished_reason="stop",{vl}}} {c.requests}{stamp}',
            f"vllm:num_requests_running{{{vl}}} {load.running / n}",
            f"vllm:num_requests_waiting{{{vl}}} {load.waiting / n}",
        ]
        # Histograms whose p95 lands near the set value: every observation in the bucket ending at it.
        request_itl = load.itl_p95_seconds if load.request_itl_p95_seconds is None else load.request_itl_p95_seconds
        for name, value, count in (("vllm:time_to_first_token_seconds", load.ttft_p95_seconds, c.requests),
                                   ("vllm:inter_token_latency_seconds", load.itl_p95_seconds, c.tokens),
                                   ("vllm:request_time_per_output_token_seconds", request_itl, c.requests)):
            for le, share in ((value * 0.5, 0.0), (value, 1.0), (value * 2, 1.0), (float("inf"), 1.0)):
                le_text = "+Inf" if le == float("inf") else f"{le:g}"
                out.append(f'{name}_bucket{{le="{le_text}",{vl}}} {count * share}{stamp}')
            out.append(f"{name}_count{{{vl}}} {count}{stamp}")
            out.append(f"{name}_sum{{{vl}}} {count * value * 0.9}{stamp}")
        return out
