"""2,000 fuzzed LLMService specs through server-side dry run: each is rejected with the field named, or admitted.
A sample of the admitted odd ones is then applied with the operator running: none crashes it, each gets a
condition, and no Deployment comes out absurd."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from typing import Any

import pytest
from kubernetes import client
from wattkeeper.controller.runner import OperatorThread, build_dependencies
from wattkeeper.controller.settings import OperatorSettings

from tests.support.fuzz_specs import fuzzed_spec
from tests.support.operator_process import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION = "wattkeeper.io", "v1alpha1"
SPECS = 2000
APPLIED_SAMPLE = 60
FIELD = re.compile(r"\bspec(\.[A-Za-z0-9_\[\]]+)*")


def test_fuzzed_specs_are_rejected_with_the_field_named_or_handled(api_client, namespace) -> None:  # type: ignore[no-untyped-def]
    api = client.CustomObjectsApi(api_client)
    rng = random.Random(1414)
    admitted: list[tuple[dict[str, Any], list[str]]] = []
    unnamed: list[str] = []
    reasons: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(SPECS):
        spec, changed = fuzzed_spec(rng)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService", "metadata": {"name": f"fuzz-{i}"},
                "spec": spec}
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices", body, dry_run="All")
        except client.ApiException as err:
            assert err.status in (400, 422), f"{err.status} for {changed}: {err.body}"
            message = json.loads(err.body or "{}").get("message", "")
            reasons[str(err.status)] += 1
            if not FIELD.search(message):
                unnamed.append(f"{changed}: {message[:200]}")
            continue
        admitted.append((spec, changed))
    dry_run_s = time.monotonic() - started
    print(f"fuzz: {SPECS} specs in {dry_run_s:.0f}s; rejected {SPECS - len(admitted)} ({dict(reasons)}), "
          f"admitted {len(admitted)}; rejections without a field named: {len(unnamed)}")
    assert not unnamed, unnamed[:5]

    # The admitted odd ones, applied for real with the operator running (no telemetry reachable).
    settings = OperatorSettings(interval_seconds=2, namespaces=[namespace], metrics_port=0, health_port=0,
                                prometheus_url=f"http://127.0.0.1:{free_port()}")
    deps = build_dependencies(settings, api_client)
    sample = random.Random(7).sample(admitted, min(APPLIED_SAMPLE, len(admitted)))
    with OperatorThread(deps) as running:
        for i, (spec, _) in enumerate(sample):
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService", "metadata": {"name": f"odd-{i}"},
                "spec": spec})

        def all_conditioned() -> bool | str:
            assert running.thread.is_alive() and running.error is None, running.error  # a dead operator fails now
            items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices")["items"]
            missing = [o["metadata"]["name"] for o in items if not (o.get("status") or {}).get("conditions")]
            if not missing:
                return True
            return (f"{len(missing)} without a condition, such as "
                    f"{[(name, sample[int(name.split('-')[1])][1]) for name in missing[:5]]}")
        wait_for("a condition on every applied odd spec", all_conditioned, timeout=120, every=1, not_yet=(str,))
        assert running.thread.is_alive() and running.error is None
        assert deps.liveness is not None and deps.liveness() is None
    print(f"fuzz: {len(sample)} admitted odd specs applied; each has a condition")
    specs = {f"odd-{i}": spec for i, (spec, _) in enumerate(sample)}
    absurd = []
    for dep in client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items:
        spec = specs[dep.metadata.name]
        scaling = spec.get("scaling") or {}
        high = int(scaling.get("maxReplicas", 4)) if "mode" not in spec or spec.get("mode") != "Pinned" else 1000
        gpus = dep.spec.template.spec.containers[0].resources.limits.get("nvidia.com/gpu")
        if not 0 <= dep.spec.replicas <= high or gpus not in ("1", "2", "4", "8"):
            absurd.append(f"{dep.metadata.name}: {dep.spec.replicas} replicas, {gpus} GPUs")
    print(f"fuzz: {len(absurd)} absurd Deployments")
    assert not absurd, absurd
