"""Pure renderers: (service, plan) -> Kubernetes objects. No client, no I/O."""

from .objects import (
    CANARY_SUFFIX,
    LABEL_MANAGED_BY,
    LABEL_ROLE,
    LABEL_SERVICE,
    ROLE_CANARY,
    RenderError,
    canary_name,
    config_hash,
    render_canary_deployment,
    render_deployment,
    render_service,
    selector_labels,
)

__all__ = [
    "CANARY_SUFFIX", "LABEL_MANAGED_BY", "LABEL_ROLE", "LABEL_SERVICE", "ROLE_CANARY", "RenderError", "canary_name",
    "config_hash", "render_canary_deployment", "render_deployment", "render_service", "selector_labels",
]
