"""`wattkeeper profile` talks to the API server through the one door, `Kube`."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from wattkeeper.controller import profilecli


class FakeKube:
    def __init__(self, *_: Any) -> None:
        self.profiles: dict[str, dict[str, Any]] = {}
        self.jobs: list[str] = []
        FakeKube.last = self

    last: FakeKube

    def create_custom(self, plural: str, obj: dict[str, Any]) -> bool:
        name = obj["metadata"]["name"]
        if name in self.profiles:
            return False
        self.profiles[name] = {**obj, "metadata": {**obj["metadata"], "uid": "u1"},
                               "status": {"phase": "Measured", "points": []}}
        return True

    def get_namespaced_custom(self, group: str, version: str, namespace: str, plural: str,
                              name: str) -> dict[str, Any]:
        return self.profiles[name]

    def create_job(self, job: dict[str, Any]) -> bool:
        if job["metadata"]["name"] in self.jobs:
            return False
        self.jobs.append(job["metadata"]["name"])
        return True


def _args(**overrides: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    profilecli.register(parser.add_subparsers())
    args = parser.parse_args(["profile", "llama", "-n", "lab", "--model", "meta-llama/Llama-3.1-8B-Instruct",
                              "--parameters-billions", "8", "--simulate", "--wait", "5"])
    return argparse.Namespace(**{**vars(args), **overrides})


def test_creates_the_profile_and_its_job_then_prints_the_points(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(profilecli, "kubernetes_client", lambda kubeconfig: None)
    monkeypatch.setattr(profilecli, "Kube", FakeKube)
    assert profilecli._run(_args()) == 0
    assert list(FakeKube.last.profiles) == ["llama"] and len(FakeKube.last.jobs) == 1
    out = capsys.readouterr()
    assert "created Job" in out.err and '"phase": "Measured"' in out.out
