"""Which pod holds which GPU: the sidecar form (downward API) and the DaemonSet form (kubelet pod-resources API).

The pod-resources API is a gRPC service on the kubelet's socket. Rather than ship generated protobuf stubs for one
call, `List` is invoked with raw bytes and its answer decoded by the few lines of protobuf wire format below.
grpc itself is optional: without it the DaemonSet form logs once and exports GPUs without pod labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class PodRef:
    namespace: str = ""
    pod: str = ""
    container: str = ""


# Maps GPU UUIDs to the pod containers holding them (one lookup per scrape); missing UUIDs get empty labels.
PodMapper = Callable[[Sequence[str]], dict[str, PodRef]]


def sidecar_mapper(env: Mapping[str, str]) -> PodMapper:
    """The sidecar form: every GPU this process sees belongs to its own pod (downward-API variables)."""
    ref = PodRef(
        namespace=env.get("POD_NAMESPACE", ""), pod=env.get("POD_NAME", ""), container=env.get("CONTAINER_NAME", "")
    )
    return lambda uuids: dict.fromkeys(uuids, ref)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values stay bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire == 1:
            yield number, wire, data[pos : pos + 8]
            pos += 8
        elif wire == 5:
            yield number, wire, data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _strings(data: bytes, number: int) -> list[str]:
    return [v.decode() for n, w, v in _fields(data) if n == number and w == 2 and isinstance(v, bytes)]


def _messages(data: bytes, number: int) -> list[bytes]:
    return [v for n, w, v in _fields(data) if n == number and w == 2 and isinstance(v, bytes)]


def gpu_uuid_of(device_id: str) -> str:
    """The physical GPU's UUID behind a device-plugin device id.

    With time-slicing (or MPS) NVIDIA's device plugin hands out replicas of one GPU as `GPU-<uuid>::<n>`; NVML
    knows only `GPU-<uuid>`. dcgm-exporter maps such ids to the GPU by the part before `::`
    (internal/pkg/transformation/kubernetes.go, toDeviceToPod: `strings.Split(deviceID, "::")[0]`), and so does
    this exporter.
    """
    return device_id.split("::", 1)[0]


def decode_list_response(data: bytes, resource: str = GPU_RESOURCE) -> dict[str, PodRef]:
    """Device id -> pod, from a v1 ListPodResourcesResponse. Time-sliced ids (`GPU-<uuid>::<n>`) are also
    entered under the GPU's own UUID; when several containers share one GPU, the last listed holds the UUID's
    labels, as in dcgm-exporter's default (non-virtual-GPU) mapping, which keeps one series per GPU so that
    power summed over pods is not counted twice.

    v1 schema: ListPodResourcesResponse{1: repeated PodResources}; PodResources{1: name, 2: namespace,
    3: repeated ContainerResources}; ContainerResources{1: name, 2: repeated ContainerDevices};
    ContainerDevices{1: resource_name, 2: repeated device_ids}. NVIDIA's device plugin uses GPU UUIDs as ids.
    """
    owners: dict[str, PodRef] = {}
    for pod in _messages(data, 1):
        pod_name = (_strings(pod, 1) or [""])[0]
        namespace = (_strings(pod, 2) or [""])[0]
        for container in _messages(pod, 3):
            container_name = (_strings(container, 1) or [""])[0]
            for devices in _messages(container, 2):
                name = (_strings(devices, 1) or [""])[0]
                # `nvidia.com/gpu.shared`: the device plugin's time-slicing with renameByDefault.
                if name != resource and not name.startswith(resource + "."):
                    continue
                for device_id in _strings(devices, 2):
                    ref = PodRef(namespace=namespace, pod=pod_name, container=container_name)
                    owners[gpu_uuid_of(device_id)] = ref
                    owners[device_id] = ref
    return owners


def kubelet_mapper(socket_path: str = DEFAULT_KUBELET_SOCKET, timeout_seconds: float = 2.0) -> PodMapper:
    """The DaemonSet form: ask the kubelet which container holds each GPU (re-asked on every scrape)."""
    try:
        import grpc  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.warning(
            "grpc is not installed: GPUs are exported without namespace/pod/container labels "
            "(install grpcio to map GPUs to pods through %s)",
            socket_path,
        )
        return lambda _uuids: {}

    channel = grpc.insecure_channel(f"unix://{socket_path}")
    call = channel.unary_unary(
        "/v1.PodResourcesLister/List",
        request_serializer=lambda _request: b"",  # ListPodResourcesRequest has no fields
        response_deserializer=lambda raw: raw,
    )

    def lookup(uuids: Sequence[str]) -> dict[str, PodRef]:
        try:
            owners = decode_list_response(call(None, timeout=timeout_seconds))
        except Exception as error:  # a kubelet hiccup must not break the scrape
            log.warning("pod-resources List failed: %s", error)
            return {}
        return {uuid: owners[uuid] for uuid in uuids if uuid in owners}

    return lookup


def decode_device_owners(data: bytes, resource: str = GPU_RESOURCE) -> dict[str, list[PodRef]]:
    """Device id -> every container that the kubelet lists for it (more than one is a conflict to refuse)."""
    owners: dict[str, list[PodRef]] = {}
    for pod in _messages(data, 1):
        pod_name = (_strings(pod, 1) or [""])[0]
        namespace = (_strings(pod, 2) or [""])[0]
        for container in _messages(pod, 3):
            container_name = (_strings(container, 1) or [""])[0]
            for devices in _messages(container, 2):
                if (_strings(devices, 1) or [""])[0] != resource:
                    continue
                for device_id in _strings(devices, 2):
                    owners.setdefault(device_id, []).append(PodRef(namespace, pod_name, container_name))
    return owners


def kubelet_owner_lister(
    socket_path: str = DEFAULT_KUBELET_SOCKET, timeout_seconds: float = 2.0
) -> Callable[[], dict[str, list[PodRef]]]:
    """For the power-limit agent: like kubelet_mapper, but errors raise (the agent then fails closed) and grpc is
    required (without it no GPU can be attributed, so no limit may be applied)."""
    import grpc  # type: ignore[import-not-found, unused-ignore]

    channel = grpc.insecure_channel(f"unix://{socket_path}")
    call = channel.unary_unary(
        "/v1.PodResourcesLister/List",
        request_serializer=lambda _request: b"",
        response_deserializer=lambda raw: raw,
    )
    return lambda: decode_device_owners(call(None, timeout=timeout_seconds))
