"""Start and stop a real Prometheus (Debian's package) on loopback, for tests and the demo."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    folder: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start(folder: Path, port: int, scrape_configs: list[dict], scrape_interval: str = "1s") -> Prometheus:
    """A Prometheus scraping `scrape_configs`, its data in `folder`, ready when this returns."""
    config = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
              "scrape_configs": scrape_configs}
    return start_with_config(folder, port, yaml.safe_dump(config))


def start_with_config(folder: Path, port: int, config_text: str, wrapper: list[str] | None = None,
                      env: dict[str, str] | None = None, binary: str | None = None) -> Prometheus:
    """A Prometheus (`binary`, default Debian's) with exactly `config_text`, started through `wrapper` (a command
    that execs its arguments, e.g. to give it a private mount namespace), with `env` added to the environment;
    ready when this returns."""
    binary = binary or shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: run hack/install-debs.sh (Debian package prometheus)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(config_text)
    log = open(folder / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [*(wrapper or []), binary, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=2h", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return Prometheus(url, process, folder)
        except OSError:
            time.sleep(0.2)
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"Prometheus did not start; see {folder / 'prometheus.log'}")
