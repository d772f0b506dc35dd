"""Scrape mode as with real vLLM: the simulator serves only vLLM's metrics on its port (real vLLM exports no power,
so `--dcgm-port` moves its DCGM series elsewhere); the pod's GPU power comes from its node's exporter: the runtime's
NVML exporter with fake GPUs, or a dcgm-exporter (the simulator's DCGM side port, labelled as dcgm-exporter labels)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from wattkeeper.telemetry import DirectScrapeSource, TelemetryUnavailable
from wattkeeper.telemetry.scrape import ScrapeTarget

from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

NAMESPACE, POD = "team-a", "llama-7c9f8d-abcde"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A vLLM pod (simulator, TP 2) and its node's two kinds of GPU exporter, on loopback."""
    tmp = tmp_path_factory.mktemp("scrape")
    vllm_port, dcgm_port, nvml_port = _free_port(), _free_port(), _free_port()
    processes = [
        _spawn([sys.executable, "-m", "wattkeeper_runtime.cli", "sim", "meta-llama/Llama-3.1-8B-Instruct",
                "--served-model-name", "llama", "--tensor-parallel-size", "2", "--port", str(vllm_port),
                "--dcgm-port", str(dcgm_port), "--pod-namespace", NAMESPACE, "--pod-name", POD, "--speedup", "1"],
               tmp / "sim.log"),
        _spawn([sys.executable, "-m", "wattkeeper_runtime.cli", "exporter", "--fake", "2", "--pod-mapping", "env",
                "--address", "127.0.0.1", "--port", str(nvml_port)], tmp / "exporter.log",
               env={"POD_NAMESPACE": NAMESPACE, "POD_NAME": POD, "CONTAINER_NAME": "vllm"}),
    ]
    urls = {"vllm": f"http://127.0.0.1:{vllm_port}", "dcgm": f"http://127.0.0.1:{dcgm_port}/metrics",
            "nvml": f"http://127.0.0.1:{nvml_port}/metrics"}
    stop = threading.Event()
    try:
        wait_for("the simulator", lambda: httpx.get(f"{urls['vllm']}/health").status_code == 200,
                 timeout=30, every=0.3, retry_on=(httpx.HTTPError, TelemetryUnavailable))
        wait_for("the NVML exporter", lambda: httpx.get(urls["nvml"]).status_code == 200,
                 timeout=30, every=0.3, retry_on=(httpx.HTTPError, TelemetryUnavailable))

        def load() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        http.post(f"{urls['vllm']}/v1/completions", json={"model": "llama", "prompt": "hi " * 50,
                                                                            "max_tokens": 32})
                    except httpx.HTTPError:  # the simulator stopping at teardown
                        stop.wait(0.2)

        for _ in range(4):
            threading.Thread(target=load, daemon=True).start()
        yield urls
    finally:
        stop.set()
        for process in processes:
            process.terminate()
            process.wait(10)


def test_vllm_port_alone_has_no_power(node: dict[str, str]) -> None:
    text = httpx.get(f"{node['vllm']}/metrics").text
    assert "vllm:generation_tokens_total" in text and "DCGM_FI_DEV" not in text
    source = DirectScrapeSource(lambda ns, svc: [(POD, f"{node['vllm']}/metrics")])
    with pytest.raises(TelemetryUnavailable, match="no GPU exporter"):
        source.observe_service(NAMESPACE, "llama", 10)


@pytest.mark.parametrize("exporter,metric", [("nvml", "wattkeeper_gpu_power_watts"),
                                              ("dcgm", "DCGM_FI_DEV_POWER_USAGE")])
def test_power_from_the_nodes_exporter_tokens_from_vllm(node: dict[str, str], exporter: str, metric: str) -> None:
    target = ScrapeTarget(POD, f"{node['vllm']}/metrics", (node[exporter],))
    source = DirectScrapeSource(lambda ns, svc: [target])
    source.observe_service(NAMESPACE, "llama", 10)  # the first scrape gives gauges only
    time.sleep(2.0)
    observed = source.observe_service(NAMESPACE, "llama", 10)
    # Two GPUs of the pod, each between idle and full power.
    assert 2 * 60 < observed.watts < 2 * 750, observed
    assert observed.output_tokens_per_second and observed.output_tokens_per_second > 0
    assert observed.ttft_p95_seconds is not None and observed.pods_reporting == 1
    gauges = sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(node[exporter]).text.splitlines()
                 if line.startswith(metric + "{"))
    assert gauges > 0
    print(f"{exporter}: {observed.watts:.0f} W (exporter's gauges now {gauges:.0f} W), "
          f"{observed.output_tokens_per_second:.0f} tokens/s, TTFT p95 {observed.ttft_p95_seconds:.3f} s")


def test_an_exporter_that_does_not_name_the_pod_gives_no_power(node: dict[str, str]) -> None:
    target = ScrapeTarget("qwen-5b6d7f-klmno", f"{node['vllm']}/metrics", (node["nvml"], node["dcgm"]))
    source = DirectScrapeSource(lambda ns, svc: [target])
    with pytest.raises(TelemetryUnavailable):
        source.observe_service(NAMESPACE, "qwen", 10)
