"""PromQL for series that name a workload pod, under both label conventions of GPU exporters.

dcgm-exporter labels each GPU's series with the pod that holds the GPU: `namespace`, `pod`, `container`
(dcgm-exporter 4.5.x internal/pkg/transformation/const.go:21-23, set in kubernetes.go PodMapper.Process). How they
arrive in Prometheus depends on the scrape:
- honor_labels: true (our chart's NVML-exporter ServiceMonitor; a PodMonitor/ServiceMonitor with honorLabels):
  `namespace` and `pod` are the workload's.
- honor_labels: false (Prometheus' default, and the default of dcgm-exporter's own chart, deployment/values.yaml
  `serviceMonitor.honorLabels: false`, templates/service-monitor.yaml:38): the target's labels win, so `namespace`
  and `pod` name the exporter pod, and Prometheus renames the exporter's own to `exported_namespace` and
  `exported_pod` (Prometheus scrape/scrape.go mutateSampleLabels, "exported_" prefix).
Every query reads both and normalises the second to `namespace`/`pod` with label_replace, then keeps one value per
pod (`or`), so a pod scraped under both conventions at once is counted once.
"""

from __future__ import annotations

_EXPORTED = (
    'label_replace(label_replace({inner}, "namespace", "$1", "exported_namespace", "(.+)"), '
    '"pod", "$1", "exported_pod", "(.+)")'
)


def _matchers(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def pod_series(template: str, namespace: str | None = None, pod_regex: str | None = None,
               namespace_regex: str | None = None) -> str:
    """`template` (with `{sel}` where the label matchers go) summed `by (namespace, pod)` over both conventions.

    With `namespace` (or `namespace_regex`) and `pod_regex` the series are limited to those pods; without, every
    pod-attributed series is returned (a pass that queries once for all services). Series of GPUs that no pod holds
    keep the exporter pod's name under honor_labels: false; they match no service's pods and are harmless."""
    if namespace is not None:
        plain_ns, exported_ns = f'namespace="{namespace}"', f'exported_namespace="{namespace}"'
    elif namespace_regex is not None:
        plain_ns, exported_ns = f'namespace=~"{namespace_regex}"', f'exported_namespace=~"{namespace_regex}"'
    else:
        plain_ns = exported_ns = ""
    plain_sel = _matchers(plain_ns, f'pod=~"{pod_regex}"' if pod_regex is not None else 'pod!=""', 'exported_pod=""')
    exported_sel = _matchers(exported_ns,
                             f'exported_pod=~"{pod_regex}"' if pod_regex is not None else 'exported_pod!=""')
    plain = template.format(sel=plain_sel)
    exported = _EXPORTED.format(inner=template.format(sel=exported_sel))
    return f"sum by (namespace, pod) ({plain}) or sum by (namespace, pod) ({exported})"


def service_total(template: str, namespace: str, pod_regex: str, scale: float = 1.0) -> str:
    """One number for a service: the sum over its pods of `template`, under either convention."""
    total = f"sum({pod_series(template, namespace, pod_regex)})"
    return total if scale == 1.0 else f"{total} * {scale:g}"
