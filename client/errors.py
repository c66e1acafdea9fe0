"""The exceptions the ramraft client raises.

Every error is a ``RamraftError``. A write (put, delete, cas) that ends in
``Unavailable`` or ``DeadlineExceeded`` MAY OR MAY NOT have been applied: the
request may have reached the leader and committed before the answer was lost.
Read the key to find out. Retrying it with a *new* call is a new write;
the client already retried the original one, with the same session, for as
long as its deadline allowed.
"""

from __future__ import annotations

import grpc

__all__ = [
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RamraftError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_for_status",
]


class RamraftError(Exception):
    """Base class. ``code`` is the gRPC status of the last attempt (None when
    the client gave up without a reply), ``details`` the server's message,
    ``endpoint`` the node that answered last and ``attempts`` how many calls
    were made."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: str = "",
        endpoint: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = details
        self.endpoint = endpoint
        self.attempts = attempts


class InvalidArgument(RamraftError, ValueError):
    """The request is malformed (empty key, key or value over the server's
    limit, unknown enum value). Retrying does not help."""


class Unavailable(RamraftError):
    """No node could serve the request before the deadline (nodes down, no
    leader, no quorum). A write may or may not have been applied."""


class DeadlineExceeded(RamraftError, TimeoutError):
    """The deadline passed before an answer came. A write may or may not have
    been applied."""


class NotFound(RamraftError):
    """An admin call named something that does not exist (e.g. removing an
    unknown member). A missing key is not an error: ``get`` returns None."""


class FailedPrecondition(RamraftError):
    """The cluster refused the change in its current state (e.g. another
    membership change is in progress)."""


class Unauthenticated(RamraftError):
    """The cluster requires a token (or the token is not valid): give the
    client ``token=`` (CLI: --token, --token-file or RAMRAFT_TOKEN)."""


class PermissionDenied(RamraftError):
    """The token is valid but its role does not allow the call (a read-only
    token writing, a non-admin token calling an admin method)."""


class ResourceExhausted(RamraftError):
    """The nodes refused the request as overloaded for as long as the
    deadline allowed (the request was not applied), or the request is larger
    than the server accepts."""


_BY_CODE: dict[grpc.StatusCode, type[RamraftError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def error_for_status(code: grpc.StatusCode | None) -> type[RamraftError]:
    """The exception class for a gRPC status code."""
    if code is None:
        return RamraftError
    return _BY_CODE.get(code, RamraftError)
