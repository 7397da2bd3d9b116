"""Domain errors, each carrying the gRPC status code users should see.

Servicers and the plain classes behind them raise these; one interceptor
(`canarycast.interceptors`) turns them into gRPC statuses. Nothing below the
edge needs to know about `grpc.ServicerContext`.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class CanarycastError(Exception):
    """Base of errors that map to a gRPC status code."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidArgument(CanarycastError):
    """Bad input. The message starts with the offending field, e.g. `series[2].history`."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceExhausted(CanarycastError):
    """Too much at once: a full queue or a limit that a retry later may pass."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CanarycastError):
    """Not ready (no model loaded yet) or shutting down; retrying elsewhere may work."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CanarycastError):
    """The caller's deadline passed before the work was done; the work was skipped."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(CanarycastError):
    status_code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(CanarycastError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(CanarycastError):
    """No credentials, or ones the server does not know. The message never holds them."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CanarycastError):
    """Known credentials that may not call this method."""

    status_code = grpc.StatusCode.PERMISSION_DENIED
