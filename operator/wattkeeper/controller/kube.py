"""The operator's only door to the API server: reads, server-side apply, status patches and events.

Built on an injected `kubernetes.client.ApiClient`; every write is counted so tests can assert that a converged
service writes nothing. Every call carries a timeout: a request that hangs across an apiserver restart must not
hang the control loop with it (the client's default is no timeout at all).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wattkeeper.api import GROUP, VERSION
from wattkeeper.render import LABEL_SERVICE

from .metrics import OperatorMetrics

log = logging.getLogger("wattkeeper.kube")

# Labels of every object the operator renders (render/objects.py `_labels`): what it lists and watches.
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=wattkeeper"
# Above this many services a LIST names none of them: the selector (and the URL) would grow past what it saves.
SELECT_AT_MOST = 300
LABEL_VALUE_MAX = 63


def owned_selector(services: list[str] | None) -> str | None:
    """The label selector of the operator's objects of these services (None: of every service); None when there
    is nothing to list. Names that cannot be label values, or too many of them, select every service."""
    if services is None or len(services) > SELECT_AT_MOST or any(len(n) > LABEL_VALUE_MAX for n in services):
        return MANAGED_SELECTOR
    if not services:
        return None
    return f"{MANAGED_SELECTOR},{LABEL_SERVICE} in ({','.join(sorted(services))})"


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


def apply_body(obj: dict[str, Any]) -> bytes:
    """The body of a server-side apply: JSON, which is YAML, as raw UTF-8.

    kubernetes-client serialises a dict body with `json.dumps` (kubernetes/client/rest.py, "JSON is valid YAML 1.2"),
    which escapes every non-ASCII character; an astral one (an emoji) becomes a UTF-16 surrogate pair such as
    `\\ud83d\\ude00`, which the apiserver's YAML decoder (sigs.k8s.io/yaml over go-yaml) rejects as an invalid
    escape. Raw UTF-8 needs no escape at all. Control characters stay `\\u00XX` escapes, which YAML accepts."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


LIST_PAGE = 200  # objects per page of the operator's LISTs of its Deployments and Services


def _pick(obj: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: obj[k] for k in keys if obj and k in obj}


def slim_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return _pick(obj.get("metadata"), ("name", "namespace", "uid", "generation", "resourceVersion", "labels",
                                       "annotations", "deletionTimestamp"))


# kopf's copy of the last spec it handled (its diff base, about 1 KB per service): only kopf reads it, from its watch.
KOPF_DIFFBASE = "wattkeeper.io/last-handled-configuration"


def slim_custom(obj: dict[str, Any]) -> dict[str, Any]:
    """A listed custom object without what the operator never reads: `managedFields` (40% of a listed
    LLMService) and kopf's diff base. A pass holds every service's body; the heap keeps what a pass once held."""
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations:
        annotations.pop(KOPF_DIFFBASE, None)
    return obj


def slim_deployment(obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of a listed Deployment: its metadata, replicas, the containers' plan fields
    (`deployment_drift`) and status (`deployment_state`); the rest (probes, volumes, managedFields) is dropped
    as soon as the page is read."""
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = [{**_pick(c, ("name", "image", "command", "args", "env")),
                   "resources": _pick(c.get("resources"), ("limits",))} for c in pod.get("containers") or []]
    return {"apiVersion": obj.get("apiVersion", "apps/v1"), "kind": "Deployment", "metadata": slim_metadata(obj),
            "spec": {**_pick(spec, ("replicas",)), "template": {"spec": {"containers": containers}}},
            "status": obj.get("status") or {}}


def slim_service(obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of a listed core Service (`service_drift`): metadata, selector and ports."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": slim_metadata(obj),
            "spec": _pick(obj.get("spec"), ("selector", "ports"))}


class Kube:
    def __init__(self, api_client: client.ApiClient, field_manager: str, metrics: OperatorMetrics,
                 timeout_seconds: float = 15.0) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self.metrics = metrics
        self.timeout_seconds = timeout_seconds
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch: Any = client.BatchV1Api(api_client)  # Any: Jobs go in as plain dicts
        # The Deployment generation and Service resourceVersion each of our applies produced: a watch event
        # with another one is someone else's change (drift), one with ours is our own echo or a status update.
        self._applied: dict[tuple[str, str, str], str] = {}
        self._applied_lock = threading.Lock()
        self._thread = threading.local()  # writes made by the current thread (`writes_in_thread`)

    def _count_write(self, verb: str, kind: str) -> None:
        self.metrics.api_writes.labels(verb, kind).inc()
        self._thread.writes = getattr(self._thread, "writes", 0) + 1

    def writes_in_thread(self) -> int:
        """How many writes the calling thread has made: a reconcile tells from it whether it wrote anything."""
        return int(getattr(self._thread, "writes", 0))

    # reads
    def list_custom(self, plural: str, namespace: str | None,
                    label_selector: str | None = None) -> list[dict[str, Any]]:
        """All objects of a kind in a namespace (None: cluster-wide), without those being deleted, as
        `slim_custom` records; `label_selector`: only those the apiserver finds it selects."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:  # a page at a time (see `_list_pages`)
            kwargs: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": self.timeout_seconds,
                                      "_preload_content": False}
            if label_selector:
                kwargs["label_selector"] = label_selector
            if token:
                kwargs["_continue"] = token
            response: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs) \
                if namespace is None else \
                self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, **kwargs)
            listing = json.loads(response.data)
            out.extend(slim_custom(item) for item in listing.get("items") or []
                       if not item["metadata"].get("deletionTimestamp"))
            token = (listing.get("metadata") or {}).get("continue")
            if not token:
                return out

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, plural, name, _request_timeout=self.timeout_seconds)
            return obj
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def get_cluster_custom(self, group: str, version: str, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
            group, version, plural, name, _request_timeout=self.timeout_seconds)
        return obj

    def get_namespaced_custom(self, group: str, version: str, namespace: str, plural: str,
                              name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
            group, version, namespace, plural, name, _request_timeout=self.timeout_seconds)
        return obj

    # Deployments and Services are read as raw JSON: building the client's model objects and serialising them back
    # costs more CPU than the request itself, and at 1,000 services the operator is CPU-bound.
    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response: Any = self.apps.read_namespaced_deployment(name, namespace, _preload_content=False,
                                                                 _request_timeout=self.timeout_seconds)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response: Any = self.core.read_namespaced_service(name, namespace, _preload_content=False,
                                                              _request_timeout=self.timeout_seconds)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    def list_deployments(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        """The operator's Deployments (by its managed-by label), of `services` only unless None, as slim records
        (`slim_deployment`), a page at a time."""
        selector = owned_selector(services)
        if selector is None:
            return []
        return self._list_pages(self.apps.list_deployment_for_all_namespaces if namespace is None else
                                partial(self.apps.list_namespaced_deployment, namespace), selector, slim_deployment)

    def list_services(self, namespace: str | None, services: list[str] | None = None) -> list[dict[str, Any]]:
        """The operator's core Services (by its managed-by label), of `services` only unless None, as slim records
        (`slim_service`), a page at a time."""
        selector = owned_selector(services)
        if selector is None:
            return []
        return self._list_pages(self.core.list_service_for_all_namespaces if namespace is None else
                                partial(self.core.list_namespaced_service, namespace), selector, slim_service)

    def _list_pages(self, list_call: Callable[..., Any], selector: str,
                    slim: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
        """Every object of a LIST, `LIST_PAGE` at a time, each page slimmed before the next is read. Raw JSON:
        deserialising 1,000 Deployments into model objects costs more than the request. Pages, because the
        operator's resident memory follows its peak: 1,000 Deployments in one response are 11 MB of JSON and
        several times that decoded, and the heap keeps what a pass once needed (issue 14: RSS at 1,000 services)."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": selector, "limit": LIST_PAGE,
                                      "_request_timeout": self.timeout_seconds, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            page = json.loads(list_call(**kwargs).data)
            out.extend(slim(item) for item in page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out

    def running_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector,
                                             _request_timeout=self.timeout_seconds).items
        return [self.api_client.sanitize_for_serialization(p) for p in pods if p.status and p.status.phase == "Running"]

    def running_pods_anywhere(self, selector: str, namespace: str | None) -> list[dict[str, Any]]:
        """Running pods matching `selector` in `namespace`, or in every namespace when None."""
        kwargs: dict[str, Any] = {"label_selector": selector, "_request_timeout": self.timeout_seconds}
        listing = self.core.list_namespaced_pod(namespace, **kwargs) if namespace else \
            self.core.list_pod_for_all_namespaces(**kwargs)
        return [self.api_client.sanitize_for_serialization(p) for p in listing.items
                if p.status and p.status.phase == "Running"]

    def service_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self.api_client.sanitize_for_serialization(p) for p in pods]

    # what we applied
    def applied_marker(self, kind: str, namespace: str, name: str) -> str | None:
        with self._applied_lock:
            return self._applied.get((kind, namespace, name))

    def remember(self, obj: dict[str, Any]) -> None:
        """Record the version of an object that matches the plan (after our apply, or a read that agreed)."""
        meta = obj.get("metadata") or {}
        marker = str(meta.get("generation") if obj.get("kind", "Deployment") == "Deployment"
                     else meta.get("resourceVersion"))
        key = (str(obj.get("kind") or "Deployment"), meta.get("namespace", ""), meta.get("name", ""))
        with self._applied_lock:
            # Only a new version replaces the entry: every idle pass confirms every object, and a fresh string per
            # object per pass, left among the pass's garbage, keeps the heap's pages from going back (issue 14).
            if self._applied.get(key) != marker:
                self._applied[key] = marker

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._applied_lock:
            self._applied.pop((kind, namespace, name), None)

    # writes
    def create_custom(self, plural: str, obj: dict[str, Any]) -> bool:
        """Create one of our custom objects; False when it exists already."""
        self._count_write("create", obj["kind"])
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"], plural, obj,
                                                        _request_timeout=self.timeout_seconds)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def create_job(self, job: dict[str, Any]) -> bool:
        """Create a Job; False when it exists already (a Job's spec is immutable: never re-applied)."""
        self._count_write("create", "Job")
        try:
            self.batch.create_namespaced_job(job["metadata"]["namespace"], job)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self._count_write("patch", "Pod")
        self.core.patch_namespaced_pod(name, namespace, patch)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's one field manager; force, since these objects are ours."""
        meta = obj["metadata"]
        self._count_write("apply", obj["kind"])
        deployment = obj["kind"] == "Deployment"
        # The generated method validates `body` as a dict and serialises it with ASCII escapes (see
        # `apply_body`); build its request (URL, query, auth) with the dict, then send the UTF-8 body instead.
        serialize: Any = self.apps._patch_namespaced_deployment_serialize if deployment else \
            self.core._patch_namespaced_service_serialize
        method, url, headers, _, post_params = serialize(
            name=meta["name"], namespace=meta["namespace"], body=obj, pretty=None, dry_run=None,
            field_manager=self.field_manager, field_validation=None, force=True, _request_auth=None,
            _content_type="application/apply-patch+yaml", _headers=None, _host_index=0)
        response = self.api_client.call_api(method, url, headers, apply_body(obj), post_params,
                                            _request_timeout=self.timeout_seconds)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        out = dict(json.loads(data))
        out.setdefault("kind", obj["kind"])
        self.remember(out)
        return out

    def delete_deployment(self, namespace: str, name: str) -> bool:
        """Delete a Deployment (its pods go with it, in the background); False when it was gone already."""
        self._count_write("delete", "Deployment")
        self.forget("Deployment", namespace, name)
        try:
            self.apps.delete_namespaced_deployment(name, namespace, propagation_policy="Background",
                                                   _request_timeout=self.timeout_seconds)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def patch_status(self, plural: str, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Write the status subresource only where it changed. Returns whether it wrote."""
        patch = merge_patch(old or {}, new)
        if not patch:
            return False
        self._count_write("patch-status", plural)
        log.debug("status patch %s %s/%s: %s", plural, namespace, name, patch)
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, {"status": patch},
                                                          _request_timeout=self.timeout_seconds)
        return True

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object, as `kubectl describe` shows them. Best effort: never raises."""
        meta = obj["metadata"]
        now = datetime.now(UTC)
        self._count_write("create", "Event")
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
            self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=self.timeout_seconds)
        except Exception as err:  # an event is best effort: never fail a reconcile for it, but say so
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)
