"""PrometheusSource against a real Prometheus that scrapes GPU power under both label conventions of dcgm-exporter:
with honor_labels (the series keep the workload's `namespace`/`pod`) and without (Prometheus renames them to
`exported_namespace`/`exported_pod` and puts the exporter's own target labels in their place)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from wattkeeper.telemetry import PrometheusSource, TelemetryUnavailable

from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    """Serves dcgm-exporter-format power and energy for GPUs held by the given pods, plus one idle GPU."""

    def __init__(self, pods: dict[tuple[str, str], float],
                 waiting: dict[tuple[str, str], tuple[float, float]] | None = None) -> None:
        self.pods = pods  # (namespace, pod) -> watts per pod
        self.waiting = waiting or {}  # (namespace, pod) -> vLLM's queue: (requests at the start, growth a second)
        self.started = time.monotonic()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def render(self) -> str:
        elapsed = time.monotonic() - self.started
        lines = ["# TYPE DCGM_FI_DEV_POWER_USAGE gauge", "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter"]
        gpus = [*((i, ns, pod, w) for i, ((ns, pod), w) in enumerate(self.pods.items())), (len(self.pods), "", "", 60.0)]
        for gpu, namespace, pod, watts in gpus:
            labels = f'gpu="{gpu}",UUID="GPU-{gpu}",Hostname="node-a",container="{"vllm" if pod else ""}",' \
                     f'namespace="{namespace}",pod="{pod}"'
            lines.append(f"DCGM_FI_DEV_POWER_USAGE{{{labels}}} {watts}")
            lines.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} {1e9 + watts * elapsed * 1000:.0f}")
        for (namespace, pod), (start, growth) in self.waiting.items():
            lines.append(f'vllm:num_requests_waiting{{model_name="m",namespace="{namespace}",pod="{pod}"}} '
                         f"{start + growth * elapsed:.3f}")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import prometheus as prom

    # vLLM's queue on team-a's pods (served beside the power here; in a cluster each pod exports its own): one
    # standing at 3, one growing by 0.5 a second.
    honored = Exporter({("team-a", "llama-7c9f8d-abcde"): 400.0, ("team-a", "llama-7c9f8d-fghij"): 300.0},
                       waiting={("team-a", "llama-7c9f8d-abcde"): (3.0, 0.0), ("team-a", "llama-7c9f8d-fghij"): (0.0, 0.5)})
    renamed = Exporter({("team-b", "qwen-5b6d7f-klmno"): 250.0})
    both = Exporter({("team-c", "mixtral-6c5d4e-pqrst"): 500.0})
    # Target labels as prometheus-operator's ServiceMonitor relabelling sets them for a dcgm-exporter pod.
    exporter_labels = {"namespace": "gpu-operator", "pod": "dcgm-exporter-x2x7z", "container": "exporter"}
    server = prom.start(tmp_path_factory.mktemp("prometheus"), _free_port(), [
        {"job_name": "honored", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{honored.port}"], "labels": exporter_labels}]},
        {"job_name": "renamed", "honor_labels": False,
         "static_configs": [{"targets": [f"127.0.0.1:{renamed.port}"], "labels": exporter_labels}]},
        # The same exporter scraped twice, once each way: its pod must be counted once.
        {"job_name": "both-honored", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{both.port}"], "labels": exporter_labels}]},
        {"job_name": "both-renamed", "honor_labels": False,
         "static_configs": [{"targets": [f"127.0.0.1:{both.port}"], "labels": exporter_labels}]},
    ])
    yield server.url
    server.stop()
    for exporter in (honored, renamed, both):
        exporter.server.shutdown()


def test_power_under_both_label_conventions(prometheus_url: str) -> None:
    source = PrometheusSource(prometheus_url)
    # The renamed convention really is what Prometheus stores without honor_labels.
    series = wait_for("renamed series", lambda: httpx.get(f"{prometheus_url}/api/v1/series", params={
        "match[]": 'DCGM_FI_DEV_POWER_USAGE{job="renamed",exported_pod!=""}'}).json()["data"],
        timeout=30, retry_on=(TelemetryUnavailable,))
    assert series[0]["namespace"] == "gpu-operator" and series[0]["exported_namespace"] == "team-b"

    def from_energy(namespace: str, service: str, watts: float) -> Any:
        # The energy counter's rate needs two scrapes (the power gauge answers until then) and reads low until the
        # window is covered (rate extrapolates at most half an interval beyond the samples).
        observed = source.observe_service(namespace, service, 5)
        return observed if observed.power_source == "dcgm-energy" and abs(observed.watts / watts - 1) < 0.05 else None

    wait_for("team-a power: 400 W + 300 W", lambda: from_energy("team-a", "llama", 700.0),
             timeout=30, retry_on=(TelemetryUnavailable,))
    wait_for("team-b power, exported_* labels", lambda: from_energy("team-b", "qwen", 250.0),
             timeout=30, retry_on=(TelemetryUnavailable,))
    wait_for("team-c power, scraped both ways, counted once", lambda: from_energy("team-c", "mixtral", 500.0),
             timeout=30, retry_on=(TelemetryUnavailable,))
    # The same through the batch of a pass (one query per metric for every service).
    from wattkeeper.telemetry.batch import observe_prometheus

    batch = observe_prometheus(source, [("team-a", "llama"), ("team-b", "qwen"), ("team-c", "mixtral")], 5)
    assert {key: round(o.watts) for key, o in batch.items() if not isinstance(o, TelemetryUnavailable)} == \
        pytest.approx({("team-a", "llama"): 700, ("team-b", "qwen"): 250, ("team-c", "mixtral"): 500}, rel=0.05)
    gauge = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": 'sum(DCGM_FI_DEV_POWER_USAGE{job=~"both-.*"})'})
    assert float(gauge.json()["data"]["result"][0]["value"][1]) == pytest.approx(2 * (500.0 + 60.0))  # really twice
    # The idle GPU (no pod) belongs to no service; an unknown service has no power.
    with pytest.raises(TelemetryUnavailable):
        source.observe_service("gpu-operator", "dcgm-exporter", 10)


def test_the_queues_growth_is_the_waiting_gauges_slope(prometheus_url: str) -> None:
    """PromQL deriv over the window: the standing queue of 3 grows by nothing, the other by 0.5 a second, while
    the mean queue over the window counts the standing 3 in full (control/load.py offered_rate)."""
    source = PrometheusSource(prometheus_url)

    def grown() -> Any:
        observed = source.observe_service("team-a", "llama", 10)
        growth = observed.waiting_growth_per_second
        return observed if growth is not None and abs(growth - 0.5) < 0.05 else None

    observed = wait_for("team-a's queue growing by 0.5 a second", grown, timeout=40, retry_on=(TelemetryUnavailable,))
    assert observed.waiting_requests is not None and observed.waiting_requests > 3.0
    from wattkeeper.telemetry.batch import observe_prometheus

    batch = observe_prometheus(source, [("team-a", "llama")], 10)[("team-a", "llama")]
    assert not isinstance(batch, TelemetryUnavailable)
    assert batch.waiting_growth_per_second == pytest.approx(0.5, abs=0.05)
