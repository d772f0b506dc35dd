"""Pod -> simulator arguments: what the fleet runner starts for one Running vLLM pod. Pure functions on pod JSON.

The engine container either runs `vllm serve MODEL --flags` (as a command, or as args to the vllm-openai image's
entrypoint, including the older `python -m vllm.entrypoints.openai.api_server --model MODEL` form) or the
Wattkeeper launcher (`wattkeeper-runtime launch`) with the plan in `WATTKEEPER_*` variables. Both become the
`vllm serve` arguments the real pod would run, which `wattkeeper-runtime sim` accepts as they are.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .launcher import add_launch_arguments, plan_argv, plan_from_options

SERVICE_LABEL = "wattkeeper.io/service"
ACCELERATOR_KEY = "wattkeeper.io/accelerator"  # label or annotation: H100, H200, ...
PARAMS_ANNOTATION = "wattkeeper.io/model-params-b"
ACTIVE_PARAMS_ANNOTATION = "wattkeeper.io/active-params-b"
KNOWN_GPUS = ("H100", "H200", "B200", "A100", "L40S")
# The simulator picks its own loopback address and port.
_OWN_FLAGS = ("--port", "--host")


@dataclass(frozen=True)
class SimTarget:
    """One Running pod to simulate."""

    namespace: str
    pod: str
    uid: str
    service: str
    container: str
    vllm_args: tuple[str, ...]  # `vllm serve` arguments, model first
    served_model_name: str
    gpu_type: str = "H100"
    extra_sim_args: tuple[str, ...] = field(default_factory=tuple)  # --model-params-b and the like
    grace_seconds: float = 30.0  # the pod's terminationGracePeriodSeconds
    drain_args: tuple[str, ...] | None = None  # the preStop's `wattkeeper-runtime drain` options; None: no drain

    @property
    def key(self) -> str:
        return self.uid or f"{self.namespace}/{self.pod}"


def is_running(pod: Mapping[str, Any]) -> bool:
    """Running on a node and not being deleted: what a kubelet would be serving from."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return status.get("phase") == "Running" and bool(spec.get("nodeName")) and not meta.get("deletionTimestamp")


def _literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal environment (valueFrom entries have no value to read here)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item and item.get("value") is not None:
            env[item["name"]] = _expand(str(item["value"]), env)
    return env


_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args: unknown references stay, $$ escapes a dollar."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REFERENCE.sub(replace, text)


def _mentions_engine(container: Mapping[str, Any]) -> bool:
    words = " ".join([*(container.get("command") or []), *(container.get("args") or [])])
    return "vllm" in words or "wattkeeper-runtime" in words or "wattkeeper_runtime" in words


def engine_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    containers = (pod.get("spec") or {}).get("containers") or []
    for wanted in ("vllm", "engine"):
        for container in containers:
            if container.get("name") == wanted:
                return container
    for container in containers:
        if _mentions_engine(container) or "vllm" in str(container.get("image", "")):
            return container
    return containers[0] if containers else None


def _after(tokens: Sequence[str], index: int) -> list[str]:
    return list(tokens[index + 1 :])


def _launcher_args(launch_options: Sequence[str], env: Mapping[str, str]) -> list[str]:
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_launch_arguments(parser)
    options, _unknown = parser.parse_known_args(list(launch_options))
    return plan_argv(plan_from_options(options, env))[2:]  # drop "vllm serve"


def vllm_args_of(container: Mapping[str, Any]) -> list[str] | None:
    """The `vllm serve` arguments (model first, or `--model M`) the container would run; None if it runs no vLLM."""
    env = _literal_env(container)
    command = [_expand(str(t), env) for t in container.get("command") or []]
    args = [_expand(str(t), env) for t in container.get("args") or []]
    # `sh -c "exec vllm serve ..."`: the script is the token after -c, in command or in args.
    if command and command[-1] == "-c":
        command, args = shlex.split(args[0]) if args else [], []
    elif len(command) >= 3 and command[-2] == "-c":
        command, args = shlex.split(command[-1]), []
    tokens = command + args
    for index, token in enumerate(tokens):
        if token.endswith("vllm") and index + 1 < len(tokens) and tokens[index + 1] == "serve":
            return _after(tokens, index + 1)
        if token == "vllm.entrypoints.openai.api_server":
            return _after(tokens, index)
        if ("wattkeeper-runtime" in token or token == "wattkeeper_runtime.cli") and "launch" in tokens[index + 1 :]:
            return _launcher_args(_after(tokens, tokens.index("launch", index)), env)
    if not command and args:
        return args  # args to the vllm-openai image's entrypoint (`vllm serve`)
    if "WATTKEEPER_MODEL_SOURCE" in env:
        return _launcher_args([], env)
    return None


DRAIN_MARKER = "wattkeeper-runtime drain"


def prestop_drain_args(container: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The options of a preStop hook that runs `wattkeeper-runtime drain` (as that command, or as the operator's
    `python3 -c SOURCE` form); None when the container has no such hook."""
    hook = ((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}
    command = [str(t) for t in hook.get("command") or []]
    if len(command) >= 3 and command[1] == "-c" and DRAIN_MARKER in command[2]:
        return tuple(command[3:])
    for index, token in enumerate(command[:-1]):
        if (token.endswith("wattkeeper-runtime") or token == "wattkeeper_runtime.cli") and command[index + 1] == "drain":
            return tuple(command[index + 2 :])
    return None


def strip_flags(args: Sequence[str], flags: Sequence[str] = _OWN_FLAGS) -> list[str]:
    """Remove `--flag value` and `--flag=value` occurrences of the given flags."""
    result: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        result.append(arg)
    return result


def served_model_name(args: Sequence[str]) -> str:
    """The name clients must send: --served-model-name's first value, else the model."""
    for index, arg in enumerate(args):
        if arg == "--served-model-name" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--served-model-name="):
            return arg.split("=", 1)[1]
    for index, arg in enumerate(args):
        if arg == "--model" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return args[0] if args and not args[0].startswith("-") else ""


def gpu_type_of(pod: Mapping[str, Any]) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        if source.get(ACCELERATOR_KEY):
            return str(source[ACCELERATOR_KEY]).upper()
    # nodeSelector such as nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3
    for value in (spec.get("nodeSelector") or {}).values():
        for gpu in KNOWN_GPUS:
            if gpu in str(value).upper():
                return gpu
    return "H100"


def target_of(pod: Mapping[str, Any]) -> SimTarget | None:
    """What to simulate for a pod, or None when it is not Running or runs no recognisable vLLM."""
    if not is_running(pod):
        return None
    container = engine_container(pod)
    if container is None:
        return None
    args = vllm_args_of(container)
    if not args:
        return None
    args = strip_flags(args)
    meta = pod.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    service = labels.get(SERVICE_LABEL) or labels.get("app.kubernetes.io/instance") or labels.get("app") or ""
    extra: list[str] = []
    if annotations.get(PARAMS_ANNOTATION):
        extra += ["--model-params-b", str(annotations[PARAMS_ANNOTATION])]
    if annotations.get(ACTIVE_PARAMS_ANNOTATION):
        extra += ["--active-params-b", str(annotations[ACTIVE_PARAMS_ANNOTATION])]
    return SimTarget(
        namespace=meta.get("namespace", "default"),
        pod=meta.get("name", ""),
        uid=meta.get("uid", ""),
        service=service,
        container=str(container.get("name", "")),
        vllm_args=tuple(args),
        served_model_name=served_model_name(args),
        gpu_type=gpu_type_of(pod),
        extra_sim_args=tuple(extra),
        grace_seconds=float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)),
        drain_args=prestop_drain_args(container),
    )


def sim_argv(target: SimTarget, port: int, speedup: float, python: str, host: str = "127.0.0.1") -> list[str]:
    """The command that simulates `target` on host:port."""
    return [
        python,
        "-m",
        "wattkeeper_runtime.cli",
        "sim",
        *target.vllm_args,
        "--host",
        host,
        "--port",
        str(port),
        "--gpu-type",
        target.gpu_type,
        "--pod-namespace",
        target.namespace,
        "--pod-name",
        target.pod,
        "--pod-container",
        target.container,
        "--speedup",
        f"{speedup:g}",
        *target.extra_sim_args,
    ]
