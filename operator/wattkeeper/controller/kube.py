"""The operator's only door to the API server: reads, server-side apply, status patches and events.

Built on an injected `kubernetes.client.ApiClient`; every write is counted so tests can assert that a converged
service writes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wattkeeper.api import GROUP, VERSION

from .metrics import OperatorMetrics

log = logging.getLogger("wattkeeper.kube")

def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns `old` into `new` (None where a key goes)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


class Kube:
    def __init__(self, api_client: client.ApiClient, field_manager: str, metrics: OperatorMetrics) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self.metrics = metrics
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)

    # reads
    def list_custom(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        listing: dict[str, Any] = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)  # type: ignore[assignment]
        return list(listing["items"])

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, plural, name)
            return obj
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(self.api_client.sanitize_for_serialization(obj))

    def running_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self.api_client.sanitize_for_serialization(p) for p in pods if p.status and p.status.phase == "Running"]

    def running_pods_anywhere(self, selector: str, namespace: str | None) -> list[dict[str, Any]]:
        """Running pods matching `selector` in `namespace`, or in every namespace when None."""
        listing = self.core.list_namespaced_pod(namespace, label_selector=selector) if namespace else \
            self.core.list_pod_for_all_namespaces(label_selector=selector)
        return [self.api_client.sanitize_for_serialization(p) for p in listing.items
                if p.status and p.status.phase == "Running"]

    # writes
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's one field manager; force, since these objects are ours."""
        meta = obj["metadata"]
        self.metrics.api_writes.labels("apply", obj["kind"]).inc()
        patch = self.apps.patch_namespaced_deployment if obj["kind"] == "Deployment" else \
            self.core.patch_namespaced_service
        result = patch(meta["name"], meta["namespace"], obj, field_manager=self.field_manager, force=True,
                       _content_type="application/apply-patch+yaml")
        return dict(self.api_client.sanitize_for_serialization(result))

    def patch_status(self, plural: str, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Write the status subresource only where it changed. Returns whether it wrote."""
        patch = merge_patch(old or {}, new)
        if not patch:
            return False
        self.metrics.api_writes.labels("patch-status", plural).inc()
        log.debug("status patch %s %s/%s: %s", plural, namespace, name, patch)
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, {"status": patch})
        return True

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object, as `kubectl describe` shows them."""
        meta = obj["metadata"]
        now = datetime.now(UTC)
        self.metrics.api_writes.labels("create", "Event").inc()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=obj.get("apiVersion"), kind=obj.get("kind"), name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"),
            ),
            reason=reason, message=message[:1024], type=type_, count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="wattkeeper"), reporting_component="wattkeeper.io/operator",
            reporting_instance="wattkeeper",
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as err:  # an event is best effort: never fail a reconcile for it, but say so
            log.warning("could not post event %s on %s/%s: %s %s", reason, meta["namespace"], meta["name"],
                        err.status, err.reason)
