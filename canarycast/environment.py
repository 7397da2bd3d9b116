"""Every environment variable a canarycast process reads, in one place.

A flag given on the command line wins over its variable. The chart sets these in the pods'
`env` (helm/canarycast); `tests/canarycast/test_environment.py` checks that no module
outside this one names a variable of its own.
"""

from __future__ import annotations

__all__ = [
    "CANARYCAST_ADMIN_TOKEN",
    "CANARYCAST_LOG_LEVEL",
    "CANARYCAST_REGISTRY",
    "CANARYCAST_VIEWER_TOKEN",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "VARIABLES",
]

#: The admin token of the control API (a token file given by flag wins).
CANARYCAST_ADMIN_TOKEN = "CANARYCAST_ADMIN_TOKEN"
#: The read-only viewer token of the control API (`--viewer-token-file` wins).
CANARYCAST_VIEWER_TOKEN = "CANARYCAST_VIEWER_TOKEN"
#: Default registry directory for `train`, `serve` and `models` (flag `--registry` wins).
CANARYCAST_REGISTRY = "CANARYCAST_REGISTRY"
#: Log level of canarycast processes (DEBUG, INFO, WARNING, ERROR). Default INFO.
CANARYCAST_LOG_LEVEL = "CANARYCAST_LOG_LEVEL"
#: Standard OTel variable: when set, spans are exported with OTLP/gRPC to this endpoint.
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: Standard OTel variable naming the service in traces (default: the component name).
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
#: Standard OTel variable: spans per OTLP export (default here `spans.EXPORT_BATCH_SPANS`).
OTEL_BSP_MAX_EXPORT_BATCH_SIZE = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"

#: All of them, for documentation and the test.
VARIABLES = (
    CANARYCAST_ADMIN_TOKEN,
    CANARYCAST_VIEWER_TOKEN,
    CANARYCAST_REGISTRY,
    CANARYCAST_LOG_LEVEL,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_SERVICE_NAME,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
)
