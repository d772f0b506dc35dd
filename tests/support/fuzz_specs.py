"""A seeded generator of odd LLMService specs: the example with one to three fields set to strange values
(non-ASCII, control characters, huge and tiny numbers, wrong types, missing or unknown fields)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

ODD_STRINGS = [
    "", " ", "llama \U0001F999 model", "modèle-é", "模型", "\u202egnp.exe", "nul\x00byte", "tab\tnew\nline", "\x7f\x1b[31m",
    '"quoted" \'single\'', "{{ .Values }}", "$(rm -rf /)", "--max-num-seqs=1", "a" * 5000, "x" * 70, "UPPER_case",
    "-leading-dash", "trailing.dot.", "🔥" * 50, "\\u0000", "null", "true", "1e9", "../../etc/passwd",
]
ODD_NUMBERS: list[Any] = [0, -1, 1, 2, 3, 7, 8, 16, 1e-9, 1e-300, 1e300, 2**31, 2**53, 2**63 - 1, -2**63, 0.5, 1.5, 999999,
                          65536, 1e6, 1e7]
ODD_OTHERS: list[Any] = [None, True, False, [], {}, [1, 2], {"a": 1}, ["x"], [""]]

# Paths into spec (camelCase, as the API has them), leaves and containers.
PATHS = [
    ("model", "name"), ("model", "source"), ("model", "parametersBillions"), ("model", "activeParametersBillions"),
    ("model", "architecture"), ("model", "layers"), ("model", "kvHeads"), ("model", "headDim"), ("model", "variants"),
    ("quality", "allowedPrecisions"), ("slo", "ttftP95Seconds"), ("slo", "itlP95Seconds"),
    ("scaling", "minReplicas"), ("scaling", "maxReplicas"), ("accelerator", "type"), ("accelerator", "nodeSelector"),
    ("accelerator", "maxTensorParallel"), ("accelerator", "memory"), ("accelerator", "maxGpus"),
    ("engine", "image"), ("engine", "extraArgs"), ("engine", "env"), ("engine", "gpuMemoryUtilization"),
    ("engine", "port"), ("engine", "resources"), ("workload", "requestsPerSecond"), ("workload", "inputTokens"),
    ("workload", "outputTokens"), ("priority",), ("reconfiguration", "cooldownSeconds"),
    ("reconfiguration", "allowDisruptive"), ("reconfiguration", "horizonSeconds"), ("fallback",), ("mode",),
    ("pinned",), ("unknownField",), ("model", "unknown"),
]


def base_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llmservice-llama-8b.yaml").read_text())["spec"]
    return spec


def _odd_value(rng: random.Random, path: tuple[str, ...]) -> Any:
    leaf = path[-1]
    roll = rng.random()
    if leaf == "env":
        return [{"name": rng.choice(["A", "PATH", "X_Y", "", "bad name", "é"]), "value": rng.choice(ODD_STRINGS)}
                for _ in range(rng.randint(1, 3))]
    if leaf == "extraArgs":
        return [rng.choice([*ODD_STRINGS, "--enforce-eager", "--tensor-parallel-size", "--max-model-len=4096"])
                for _ in range(rng.randint(1, 3))]
    if leaf == "nodeSelector":
        return {rng.choice(["gpu", "nvidia.com/gpu.product", "", "é/x"]): rng.choice(ODD_STRINGS)}
    if leaf == "variants":
        return [{"precision": rng.choice(["fp8", "awq", "bf16", "fp4", "nonsense"]), "source": rng.choice(ODD_STRINGS)}]
    if leaf == "allowedPrecisions":
        return rng.sample(["bf16", "fp8", "awq", "gptq", "int8", "fp4", "int4", "nonsense", "\U0001F600"],
                          rng.randint(0, 3))
    if leaf == "pinned":
        return {"precision": rng.choice(["bf16", "fp8", "int4"]), "tensorParallel": rng.choice([1, 2, 3, 8]),
                "replicas": rng.choice([0, 1, 6, 7, 1000]), "maxNumSeqs": rng.choice([1, 256, 5000]),
                "maxNumBatchedTokens": rng.choice([16, 8192, 10**7])}
    if leaf == "resources":
        return {"limits": {"cpu": rng.choice(["1", "500m", "lots", "-1", "1e3"]),
                           "memory": rng.choice(["64Gi", "1Ei", "", "0", "12.5Mi"])}}
    if roll < 0.45:
        return rng.choice(ODD_STRINGS)
    if roll < 0.85:
        return rng.choice(ODD_NUMBERS)
    return copy.deepcopy(rng.choice(ODD_OTHERS))


def fuzzed_spec(rng: random.Random) -> tuple[dict[str, Any], list[str]]:
    """A spec with 1-3 odd fields, and the paths changed."""
    spec = base_spec()
    changed = []
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(PATHS)
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        if rng.random() < 0.08 and path[-1] in node:
            del node[path[-1]]
            changed.append(".".join(path) + " (removed)")
        else:
            node[path[-1]] = _odd_value(rng, path)
            changed.append(".".join(path))
    if rng.random() < 0.3:  # and sometimes the mode that makes pinned matter
        spec["mode"] = "Pinned"
        spec.setdefault("pinned", _odd_value(rng, ("pinned",)))
        changed.append("mode")
    return spec, changed
