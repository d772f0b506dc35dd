"""The profiler Job an EnergyProfile's sweep asks for, and how the simulated cluster runs it."""

from __future__ import annotations

from wattkeeper.api import EnergyProfile
from wattkeeper.controller.profiles import profile_status, sweep_job
from wattkeeper.render.profiler import render_profiler_job
from wattkeeper_runtime.fleet import profiler_argv

BODY = {
    "apiVersion": "wattkeeper.io/v1alpha1", "kind": "EnergyProfile",
    "metadata": {"name": "llama", "namespace": "lab", "uid": "u1", "generation": 2},
    "spec": {"modelName": "meta-llama/Llama-3.1-8B-Instruct", "accelerator": "H100",
             "sweep": {"precisions": ["bf16", "fp8"], "tensorParallel": [1, 2], "gpuPowerLimitsWatts": [490]}},
}


def test_a_gpu_sweep_asks_for_its_largest_tp_in_gpus_and_runs_unprivileged() -> None:
    job = render_profiler_job(EnergyProfile.model_validate(BODY), "img:1", "sa")
    assert job["metadata"]["name"] == "llama-profile-2"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "EnergyProfile"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "wattkeeper"  # the agent's limits apply
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["profile", "--profile", "llama"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_operator_starts_one_job_per_generation() -> None:
    job = sweep_job(BODY, "img:1", "sa")
    assert job is not None
    done = {**BODY, "status": {"job": job["metadata"]["name"]}}
    assert sweep_job(done, "img:1", "sa") is None
    assert sweep_job({**BODY, "spec": {**BODY["spec"], "sweep": None, "points": []}}, "i", "s") is None


def test_status_counts_measured_points() -> None:
    point = {"precision": "bf16", "maxNumSeqs": 64, "batchSize": 8, "outputTokensPerSecond": 800, "watts": 400,
             "joulesPerToken": 0.5}
    status = profile_status({**BODY, "status": {"points": [point, {**point, "concurrency": 8}]}}, __import__(
        "datetime").datetime(2026, 1, 1))
    assert status["pointCount"] == 2 and status["conditions"][0]["status"] == "True"


def test_the_fleet_runs_only_simulated_profiler_pods() -> None:
    sim = {**BODY, "spec": {**BODY["spec"], "sweep": {**BODY["spec"]["sweep"], "simulate": True}}}
    pod = {**render_profiler_job(EnergyProfile.model_validate(sim))["spec"]["template"]}
    pod = {"metadata": {**pod["metadata"], "name": "llama-profile-2-abc", "namespace": "lab"},
           "spec": {**pod["spec"], "nodeName": "kwok-0"}, "status": {"phase": "Running"}}
    argv = profiler_argv(pod, "py", "/k", 10.0)
    assert argv is not None and argv[-6:] == ["--namespace", "lab", "--speedup", "10", "--kubeconfig", "/k"]
    assert "profile" in argv and "--simulate" in argv and "POD_NAME=llama-profile-2-abc" in argv
    real = {**pod, "spec": {**pod["spec"], "containers": [{**pod["spec"]["containers"][0],
                                                           "args": ["profile", "--profile", "llama"]}]}}
    assert profiler_argv(real, "py", "/k", 10.0) is None
