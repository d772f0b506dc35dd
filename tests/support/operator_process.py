"""`wattkeeper run` as a real process, for tests that kill it (SIGKILL) or run two peered replicas."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(self, kubeconfig: Path, namespace: str | None, prometheus_url: str, log_path: Path,
                 interval_seconds: float = 2.0, peering: str | None = None, window_seconds: float = 5.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        exe = Path(sys.executable).parent / "wattkeeper"
        self.args = [str(exe), "run", f"--kubeconfig={kubeconfig}", f"--interval-seconds={interval_seconds}",
                     f"--prometheus-url={prometheus_url}", f"--metrics-port={self.metrics_port}",
                     f"--health-port={self.health_port}"]
        if namespace:
            self.args.append(f"--namespace={namespace}")
        if peering:
            self.args.append(f"--peering={peering}")
        # MALLOC_ARENA_MAX as the chart sets it for the operator's container.
        self.env = {**os.environ, "WATTKEEPER_TELEMETRY_WINDOW_SECONDS": str(window_seconds), "MALLOC_ARENA_MAX": "2",
                    **(extra_env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=self.env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, by name and labels; empty while the endpoint is not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def counter(self, name: str, **labels: str) -> float:
        """Sum of a counter's samples whose labels include `labels`."""
        return sum(v for (n, ls), v in self.metrics().items()
                   if n == name and all((k, val) in ls for k, val in labels.items()))

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return None

    def rss_megabytes(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used (to tell its cost from a busy machine's wait)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_megabytes(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def wait_up(self, timeout: float = 60.0) -> None:
        """Wait for /healthz to answer 200; fail at once, with the exit status, if the process has exited."""
        def healthy() -> bool | str:
            if not self.alive():
                assert self.process is not None
                raise RuntimeError(f"operator exited with status {self.process.returncode}; see {self.log_path}")
            status = self.health()
            return True if status == 200 else f"/healthz answered {status}"
        wait_for(f"the operator to be healthy (see {self.log_path})", healthy, timeout=timeout, every=0.3,
                 not_yet=(str,))
