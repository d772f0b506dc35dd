"""Pure renderers: (service, plan) -> Kubernetes objects. No client, no I/O."""

from .objects import (
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    RenderError,
    config_hash,
    render_deployment,
    render_service,
    selector_labels,
)

__all__ = [
    "LABEL_MANAGED_BY", "LABEL_SERVICE", "RenderError", "config_hash", "render_deployment", "render_service",
    "selector_labels",
]
