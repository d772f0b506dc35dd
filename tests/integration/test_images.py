"""The operator image builds without Docker (a Debian base from Debian packages, the project in a venv, an OCI
layout) and its entry point runs `wattkeeper run --help` inside the unpacked image. `make images` builds both images
(operator and runtime); this bounded check builds the operator's (about a minute with the cache warm, a few the
first time: the Debian base and the wheels are cached under $WATTKEEPER_CACHE/images)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]


def _build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "images" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_operator_image_builds_and_runs_its_entry_point(tmp_path: Path) -> None:
    build = _build_module()
    reasons = build.missing_tools(check=True)
    if reasons:
        pytest.skip(f"cannot build images on this machine: {'; '.join(reasons)}")
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "--image", "operator", "--check",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=1100, check=False)  # fmt: skip
    print(done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    print(json.dumps(report, indent=2))
    operator = report["images"]["operator"]
    assert 20e6 < operator["compressed_bytes"] < 600e6, operator
    assert "usage: wattkeeper run" in report["checks"]["operator"][0]

    layout = tmp_path / "oci"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    assert config["config"]["Entrypoint"] == ["/opt/wattkeeper/bin/wattkeeper"] and config["config"]["Cmd"] == ["run"]
    assert config["config"]["User"] == "65532:65532"
    assert len(manifest["layers"]) == 2 and len(config["rootfs"]["diff_ids"]) == 2
