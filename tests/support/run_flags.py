"""The operator settings that `wattkeeper run` builds from its flags, with nothing started."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from wattkeeper.controller.settings import OperatorSettings


def settings_from_run_flags(monkeypatch: pytest.MonkeyPatch, *flags: str) -> OperatorSettings:
    """Parse `wattkeeper run FLAGS` and return the settings it would run with (no client, no operator)."""
    import argparse

    from wattkeeper.controller import cli

    seen: list[OperatorSettings] = []

    def build(conf: OperatorSettings, _client: Any) -> Any:
        seen.append(conf)
        return SimpleNamespace()

    monkeypatch.setattr(cli, "build_dependencies", build)
    monkeypatch.setattr(cli, "kubernetes_client", lambda *_: None)
    monkeypatch.setattr(cli, "run_operator", lambda *_, **__: None)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["run", *flags, "--metrics-port", "0", "--health-port", "0"])
    args.func(args)
    assert len(seen) == 1
    return seen[0]
