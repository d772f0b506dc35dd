"""The fleet runner: pod -> simulator arguments (pure), and the files it writes, with a fake process spawner."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from wattkeeper_runtime.fleet import Fleet
from wattkeeper_runtime.podargs import sim_argv, strip_flags, target_of


def pod(
    name: str = "llama-7d9f-abcde",
    command: list[str] | None = None,
    args: list[str] | None = None,
    env: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    node: str | None = "gpu-node-1",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "vllm", "image": "vllm/vllm-openai:v0.11.1"}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    if env is not None:
        container["env"] = env
    spec: dict[str, Any] = {"containers": [{"name": "exporter", "image": "x"}, container]}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{name}",
            "labels": {"wattkeeper.io/service": "llama", "app.kubernetes.io/managed-by": "wattkeeper"},
            "annotations": annotations or {},
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def test_vllm_serve_command() -> None:
    target = target_of(
        pod(
            command=["vllm", "serve"],
            args=["meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2", "--port", "8000",
                  "--max-num-seqs", "128", "--served-model-name", "llama"],
        )
    )  # fmt: skip
    assert target is not None
    assert target.vllm_args == (
        "meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2", "--max-num-seqs", "128",
        "--served-model-name", "llama",
    )  # fmt: skip
    assert (target.namespace, target.pod, target.service, target.container) == (
        "team-a",
        "llama-7d9f-abcde",
        "llama",
        "vllm",
    )
    assert target.served_model_name == "llama"
    argv = sim_argv(target, 41234, 10.0, "/usr/bin/python3")
    assert argv[:4] == ["/usr/bin/python3", "-m", "wattkeeper_runtime.cli", "sim"]
    assert argv[argv.index("--port") + 1] == "41234" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--pod-name") + 1] == "llama-7d9f-abcde"
    assert argv[argv.index("--pod-namespace") + 1] == "team-a"
    assert argv[argv.index("--speedup") + 1] == "10"


def test_args_only_to_the_image_entrypoint_and_env_expansion() -> None:
    target = target_of(
        pod(
            args=["--model", "$(MODEL)", "--max-num-seqs=64", "--port=$(PORT)"],
            env=[{"name": "MODEL", "value": "org/m-70B"}, {"name": "PORT", "value": "8000"}],
            annotations={"wattkeeper.io/model-params-b": "70", "wattkeeper.io/accelerator": "h200"},
        )
    )
    assert target is not None
    assert target.vllm_args == ("--model", "org/m-70B", "--max-num-seqs=64")
    assert target.served_model_name == "org/m-70B"
    assert target.gpu_type == "H200"
    assert target.extra_sim_args == ("--model-params-b", "70")


def test_launcher_with_env_plan() -> None:
    env: list[dict[str, Any]] = [
        {"name": "WATTKEEPER_MODEL_SOURCE", "value": "org/llama-8b"},
        {"name": "WATTKEEPER_PRECISION", "value": "fp8"},
        {"name": "WATTKEEPER_TENSOR_PARALLEL", "value": "2"},
        {"name": "WATTKEEPER_MAX_NUM_SEQS", "value": "256"},
        {"name": "WATTKEEPER_SERVED_MODEL_NAME", "value": "llama"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    target = target_of(pod(command=["wattkeeper-runtime", "launch"], env=env))
    assert target is not None
    args = list(target.vllm_args)
    assert args[0] == "org/llama-8b"
    assert args[args.index("--quantization") + 1] == "fp8"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert "--port" not in args
    assert target.served_model_name == "llama"


def test_shell_wrapped_command() -> None:
    target = target_of(pod(command=["/bin/sh", "-c"], args=["exec vllm serve org/m-8B --max-num-seqs 8 --port 80"]))
    assert target is not None and target.vllm_args == ("org/m-8B", "--max-num-seqs", "8")


@pytest.mark.parametrize("variant", [{"phase": "Pending"}, {"node": None}])
def test_only_running_scheduled_pods(variant: dict[str, Any]) -> None:
    assert target_of(pod(command=["vllm", "serve"], args=["m"], **variant)) is None


def test_deleting_pods_and_pods_without_vllm_are_skipped() -> None:
    deleting = pod(command=["vllm", "serve"], args=["m"])
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert target_of(deleting) is None
    other = pod()
    other["spec"]["containers"] = [{"name": "nginx", "image": "nginx", "command": ["nginx"]}]
    assert target_of(other) is None


def test_strip_flags() -> None:
    assert strip_flags(["m", "--port", "1", "--host=0.0.0.0", "--x", "y"]) == ["m", "--x", "y"]


class FakeProcess:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.returncode = -15

    def kill(self) -> None:
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


def test_fleet_starts_stops_and_writes_files(tmp_path: Path) -> None:
    spawned: list[list[str]] = []
    processes: list[FakeProcess] = []

    def spawner(argv: list[str], _log: Path | None) -> subprocess.Popen[bytes]:
        spawned.append(argv)
        processes.append(FakeProcess())
        return processes[-1]  # type: ignore[return-value]

    fleet = Fleet(tmp_path / "sd.json", tmp_path / "registry.json", speedup=5, spawner=spawner)
    fleet._check_ready = lambda child: setattr(child, "ready", True)  # type: ignore[method-assign]
    pods = [
        pod("a", command=["vllm", "serve"], args=["m", "--served-model-name", "llama"]),
        pod("b", command=["vllm", "serve"], args=["m", "--served-model-name", "llama"]),
        pod("c", command=["vllm", "serve"], args=["m"], phase="Pending"),
    ]
    fleet.reconcile(pods)
    assert len(spawned) == 2
    sd = json.loads((tmp_path / "sd.json").read_text())
    assert [t["labels"] for t in sd] == [
        {"namespace": "team-a", "pod": "a", "service": "llama"},
        {"namespace": "team-a", "pod": "b", "service": "llama"},
    ]
    assert all(t["targets"][0].startswith("127.0.0.1:") for t in sd)
    registry = json.loads((tmp_path / "registry.json").read_text())
    assert [e["pod"] for e in registry["services"]["llama"]] == ["a", "b"]
    assert registry["services"]["llama"][0]["model"] == "llama"
    assert registry["services"]["llama"][0]["url"].startswith("http://127.0.0.1:")

    fleet.reconcile(pods[1:])  # pod a went away
    assert processes[0].returncode == -15
    assert [e["pod"] for e in json.loads((tmp_path / "registry.json").read_text())["services"]["llama"]] == ["b"]

    fleet.stop_all()
    assert all(p.returncode is not None for p in processes)
    assert json.loads((tmp_path / "sd.json").read_text()) == []
