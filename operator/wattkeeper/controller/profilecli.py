"""`wattkeeper profile`: start the profiler Job of an EnergyProfile's sweep (creating the profile if asked) and,
with --wait, print the measured points when it is done. The operator does the same on its own for every profile
with a spec.sweep; this command is for running one by hand (or again) and watching it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from wattkeeper.api import GROUP, VERSION, EnergyProfile
from wattkeeper.render.profiler import DEFAULT_IMAGE, DEFAULT_SERVICE_ACCOUNT, render_profiler_job

from .kube import Kube
from .metrics import OperatorMetrics
from .runner import kubernetes_client


def _csv(kind: type, text: str | None) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()] if text else []


def profile_body(args: argparse.Namespace) -> dict[str, Any]:
    """An EnergyProfile with a sweep, from the command's flags (validated by the API's own model)."""
    sweep: dict[str, Any] = {
        "precisions": _csv(str, args.precisions) or ["bf16"],
        "tensorParallel": _csv(int, args.tensor_parallel) or [1],
        "maxNumSeqs": _csv(int, args.max_num_seqs) or [256],
        "gpuPowerLimitsWatts": _csv(float, args.power_limits),
        "concurrencies": _csv(int, args.concurrencies) or [1, 8, 32, 128],
        "secondsPerPoint": args.seconds_per_point,
        "simulate": args.simulate,
    }
    if args.parameters_billions:
        sweep["parametersBillions"] = args.parameters_billions
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EnergyProfile",
            "metadata": {"name": args.name, "namespace": args.namespace},
            "spec": {"modelName": args.model, "accelerator": args.accelerator, "source": "profiler",
                     "sweep": sweep}}
    EnergyProfile.model_validate(body)  # a clear error here rather than the API server's
    return body


def _run(args: argparse.Namespace) -> int:
    kube = Kube(kubernetes_client(args.kubeconfig), "wattkeeper-profile", OperatorMetrics())
    if args.model and not kube.create_custom("energyprofiles", profile_body(args)):
        print(f"EnergyProfile {args.name} exists: measuring its own sweep", file=sys.stderr)
    raw = kube.get_namespaced_custom(GROUP, VERSION, args.namespace, "energyprofiles", args.name)
    profile = EnergyProfile.model_validate(raw)
    if profile.spec.sweep is None:
        print(f"EnergyProfile {args.name} has no spec.sweep: nothing to measure", file=sys.stderr)
        return 2
    job = render_profiler_job(profile, args.image, args.service_account)
    if kube.create_job(job):
        print(f"created Job {job['metadata']['name']}", file=sys.stderr)
    else:
        print(f"Job {job['metadata']['name']} exists (the operator started it)", file=sys.stderr)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = kube.get_namespaced_custom(GROUP, VERSION, args.namespace, "energyprofiles",
                                            args.name).get("status") or {}
        if status.get("phase") in ("Measured", "Failed"):
            print(json.dumps({k: status.get(k) for k in ("phase", "message", "provenance", "points")}, indent=1))
            return 0 if status["phase"] == "Measured" else 1
        time.sleep(2)
    print(f"timed out after {args.wait:.0f} s waiting for status.phase", file=sys.stderr)
    return 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("profile", help="run the profiler Job of an EnergyProfile's sweep")
    parser.add_argument("name", help="the EnergyProfile")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the points (0: do not wait)")
    new = parser.add_argument_group("create the profile (when --model is given)")
    new.add_argument("--model", default=None, help="model name, as LLMService.spec.model.name")
    new.add_argument("--accelerator", default="H100")
    new.add_argument("--parameters-billions", type=float, default=None)
    new.add_argument("--precisions", default="bf16", help="comma-separated, e.g. bf16,fp8")
    new.add_argument("--tensor-parallel", default="1")
    new.add_argument("--max-num-seqs", default="256")
    new.add_argument("--power-limits", default="", help="GPU power limits to sweep, W, comma-separated")
    new.add_argument("--concurrencies", default="1,8,32,128")
    new.add_argument("--seconds-per-point", type=float, default=60.0)
    new.add_argument("--simulate", action="store_true", help="measure the simulator (no GPU)")
    parser.set_defaults(func=_run)
