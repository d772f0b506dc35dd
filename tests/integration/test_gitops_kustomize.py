"""The kustomize base (deploy/kustomize/base) for those who do not use Helm: it builds with `kubectl kustomize`,
an overlay can move it to another namespace, and the API server accepts every object (server-side dry-run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from .test_helm import install_peering_crds

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kustomize" / "base"


def test_base_builds(kubectl) -> None:  # type: ignore[no-untyped-def]
    docs = [d for d in yaml.safe_load_all(kubectl("kustomize", str(BASE)).stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 5  # three of ours, kopf's two peering CRDs
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
            "ClusterKopfPeering"} <= set(kinds)
    assert not [d for d in docs if "helm.sh/chart" in (d["metadata"].get("labels") or {})]


def test_overlay_is_accepted_by_the_api_server(kubectl, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    install_peering_crds(kubectl)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(BASE, tmp_path)],
    }))
    manifest = kubectl("kustomize", str(tmp_path)).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == namespace
    result = kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kustomize-test",
                     "--dry-run=server", "-f", "-", input_text=manifest)
    applied = [line for line in result.stdout.splitlines() if "serverside-applied" in line]
    assert len(applied) == len(docs), result.stdout
