#!/usr/bin/env python3
"""Does a change to the planner keep every result? Old and new code answer the same PlanRequests; compare.

For speed work on `plan()` (the evaluator, the latency model, the replay's BatchingEngine), whose results must not
move. Each side runs in its own process on its own code tree (PYTHONPATH), writes what it answered to a pickle,
and `compare` checks the two: `PlanResult.to_dict()`, the alternatives, the replays' outcomes and the chosen
plan's prediction exactly, and every array of the evaluated grid (`_evaluate`'s figures for every candidate) bit
for bit, or within 1e-9 relative where not.

    git worktree add --detach /tmp/base <old commit>
    PYTHONPATH=$PWD/operator:$PWD/runtime:$PWD/hack python hack/plan_equivalence.py record /tmp/tests.pkl
    PYTHONPATH=/tmp/base/operator:/tmp/base/runtime:/tmp/base/hack \\
        python hack/plan_equivalence.py dump /tmp/old.pkl --requests /tmp/tests.pkl
    PYTHONPATH=$PWD/operator:$PWD/runtime:$PWD/hack python hack/plan_equivalence.py dump /tmp/new.pkl \\
        --requests /tmp/tests.pkl
    python hack/plan_equivalence.py compare /tmp/old.pkl /tmp/new.pkl

The requests: those of `wattkeeper bench decision-time`, variants of them (dense, MoE and small models, load
from 0.3x to 12x, three GPU power limits, a power cap with ProtectBudget, latency margins with relaxed
verification, A100 with the p95 basis) and, with `--requests`, those `record` caught reaching the planner while
tests/unit ran (default energy model only).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def variants() -> list[Any]:
    from wattkeeper.bench.decision import decision_request
    from wattkeeper.energy.catalog import model_from_name
    from wattkeeper.energy.types import Workload

    def full(r: Any) -> Any:  # every candidate solved, as trees before the lazy search answered (`--no-frontier`)
        return replace(r, frontier=True) if "frontier" in r.__dataclass_fields__ else r

    bases = [full(decision_request(True, None, True)), full(decision_request(True, 6, False)),
             full(decision_request(True, None, False))]
    models = [
        model_from_name("meta-llama/Llama-3.1-70B-Instruct", 70.0),
        model_from_name("mistralai/Mixtral-8x7B-Instruct-v0.1", 46.7, 12.9, "moe"),
        model_from_name("openai/gpt-oss-120b", 117.0, 5.1, "moe"),
        model_from_name("meta-llama/Llama-3.1-8B-Instruct", 8.0),
    ]
    out = [full(decision_request(*a)) for a in ((False, None, False), (True, None, False), (True, 6, False),
                                          (True, None, True))]
    for b in bases:
        for m in models:
            for scale in (0.3, 1.0, 3.0, 12.0):
                wl = b.workload
                r = replace(b, model=m, workload=Workload(wl.requests_per_second * scale, wl.input_tokens,
                                                          wl.output_tokens))
                out += [
                    r,
                    replace(r, gpu_power_limits_watts=(None, 350.0, 500.0)),
                    replace(r, allocation_watts=3000.0, fallback="ProtectBudget"),
                    replace(r, max_gpus=4, ttft_margin=1.3, itl_margin=1.6, verify_relaxed_share=0.95),
                    replace(r, accelerator="A100", allowed_precisions=("bf16",), slo_basis="p95", replay=None),
                ]
    return out


class _Recorder:
    """A pytest plugin: every request that reaches search._plan with the default energy model."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def pytest_configure(self, config: Any) -> None:
        from wattkeeper.energy.model import EnergyModel
        from wattkeeper.planner import search

        original = search._plan

        def recording(request: Any, em: Any) -> Any:
            if em is EnergyModel.default():
                self.requests.append(request)
            return original(request, em)

        search._plan = recording  # type: ignore[assignment]


def record(out: Path, tests: str) -> None:
    import pytest

    recorder = _Recorder()
    pytest.main(["-q", "-p", "no:cacheprovider", tests], plugins=[recorder])
    seen: set[bytes] = set()
    unique = []
    for r in recorder.requests:
        try:
            key = pickle.dumps(r)
        except Exception:  # a request holding something unpicklable is left out
            continue
        if key not in seen:
            seen.add(key)
            unique.append(r)
    out.write_bytes(pickle.dumps(unique))
    print(f"recorded {len(unique)} distinct requests")


def dump(out: Path, requests: Path | None, no_frontier: bool = False) -> None:
    from wattkeeper.energy.model import EnergyModel
    from wattkeeper.planner import search

    em = EnergyModel.default()
    reqs = variants() + (pickle.loads(requests.read_bytes()) if requests else [])
    answers = []
    for r in reqs:
        entry: dict[str, Any] = {}
        try:
            search.clear_plan_cache()
            # Without the frontier the planner solves the queued model lazily (search._plan_once): the same
            # answers but for the frontier itself, which `compare --ignore-frontier` leaves out.
            res = search._plan(replace(r, frontier=False) if no_frontier else r, em)
            entry["dict"] = res.to_dict()
            entry["alternatives"] = [c.to_dict() for c in res.alternatives]
            entry["replays"] = [repr({**o.__dict__, "cpu_seconds": 0}) for o in res.verification]
            entry["prediction"] = repr(res.chosen.prediction) if res.chosen else None
            grid, _ = search._evaluate(r, em)
            entry["grid"] = {k: np.asarray(v) for k, v in grid.result.items()}
            entry["grid"].update(_replicas=grid.replicas, _seqs=grid.seqs, _batched=grid.batched,
                                 _base=grid.base_index)
        except Exception as e:  # an error is an answer too, and must match
            entry["error"] = repr(e)
        answers.append(entry)
    out.write_bytes(pickle.dumps(answers))
    print(f"answered {len(answers)} requests")


def compare(old_path: Path, new_path: Path, ignore_frontier: bool = False) -> int:
    old, new = pickle.loads(old_path.read_bytes()), pickle.loads(new_path.read_bytes())
    if len(old) != len(new):
        print(f"{len(old)} against {len(new)} answers")
        return 1
    bad = exact = close = 0
    worst = 0.0
    for i, (x, y) in enumerate(zip(old, new, strict=True)):
        if "error" in x or "error" in y:
            if x.get("error") != y.get("error"):
                print(i, "error", x.get("error"), y.get("error"))
                bad += 1
            continue
        keys: tuple[str, ...] = ("dict", "alternatives", "replays", "prediction")
        if ignore_frontier:
            x["dict"] = {k: v for k, v in x["dict"].items() if k != "frontier"}
            y["dict"] = {k: v for k, v in y["dict"].items() if k != "frontier"}
            # Without the frontier the chosen plan is replayed first on its own (search._plan): where it passes,
            # the alternatives the replay did not need are not listed. What is listed must lead the full list.
            if y["alternatives"] != x["alternatives"][: len(y["alternatives"])] or \
                    (x["alternatives"] and not y["alternatives"]):
                print(i, "alternatives differ")
                bad += 1
            keys = ("dict", "replays", "prediction")
        for k in keys:
            if x[k] != y[k]:
                print(i, k, "differs")
                bad += 1
        if set(x["grid"]) != set(y["grid"]):
            print(i, "grid figures differ", set(x["grid"]) ^ set(y["grid"]))
            bad += 1
            continue
        for k, u in x["grid"].items():
            v = y["grid"][k]
            if u.shape != v.shape:
                print(i, k, "shape", u.shape, v.shape)
                bad += 1
            elif np.array_equal(u, v, equal_nan=True):
                exact += 1
            else:
                with np.errstate(all="ignore"):
                    fin = np.isfinite(u) & np.isfinite(v)
                    same_rest = np.array_equal(np.where(fin, 0, u), np.where(fin, 0, v), equal_nan=True)
                    rel = float(np.max(np.abs(u[fin] - v[fin]) / np.maximum(np.abs(u[fin]), 1e-300), initial=0.0))
                worst = max(worst, rel)
                if same_rest and rel <= 1e-9:
                    close += 1
                else:
                    print(i, k, f"relative difference {rel:.2e}", "" if same_rest else "(inf/nan differ)")
                    bad += 1
    print(f"{len(old)} requests: {exact} grid arrays bit-identical, {close} within 1e-9 (worst {worst:.1e}), "
          f"{bad} differences")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run tests/unit and keep the PlanRequests the planner answered")
    r.add_argument("out", type=Path)
    r.add_argument("--tests", default="tests/unit")
    d = sub.add_parser("dump", help="answer the requests with the code on PYTHONPATH")
    d.add_argument("out", type=Path)
    d.add_argument("--requests", type=Path, help="a file written by record")
    d.add_argument("--no-frontier", action="store_true", help="ask every request without the Pareto frontier")
    c = sub.add_parser("compare", help="compare two dumps")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--ignore-frontier", action="store_true",
                   help="compare the answers but for the frontier and the alternatives no replay needed")
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.tests)
        return 0
    if args.command == "dump":
        dump(args.out, args.requests, args.no_frontier)
        return 0
    return compare(args.old, args.new, args.ignore_frontier)


if __name__ == "__main__":
    sys.exit(main())
