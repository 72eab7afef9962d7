"""Failed calls as Python exceptions.

Every call made through :class:`postmesh.Client` or
:class:`postmesh.AsyncClient` that fails raises a :class:`PostmeshError`
subclass named after the gRPC status code (:class:`InvalidArgument`,
:class:`Unauthenticated`, ...). The error carries the code, the server's
message and the ``google.rpc`` details the server attached in the
``grpc-status-details-bin`` trailer, decoded into their message types
(``BadRequest`` with the field at fault, ``RetryInfo`` saying when to try
again, ``ErrorInfo``, ...).

The error grpc raised is kept as the exception's ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"

# The detail types of google/rpc/error_details.proto, decoded from their Any.
_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.DebugInfo,
)


class PostmeshError(Exception):
    """A call that failed.

    Attributes:
        code: the gRPC status code.
        message: the server's message (or grpc's, for failures on the way).
        details: the ``google.rpc`` details, decoded (``BadRequest``,
            ``RetryInfo``, ...); detail types this library does not know stay
            ``google.protobuf.Any``.
        request_id: the ``x-request-id`` the server answered with, if any;
            quote it when reporting a problem.
    """

    code: grpc.StatusCode
    message: str
    details: list[Message]
    request_id: str | None

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: Sequence[Message] = (),
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = list(details)
        self.request_id = request_id

    @property
    def field_violations(self) -> list[error_details_pb2.BadRequest.FieldViolation]:
        """Every ``BadRequest`` field violation: which field is wrong and why."""
        return [
            violation
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for violation in detail.field_violations
        ]

    @property
    def retry_delay(self) -> float | None:
        """Seconds the server asked to wait before trying again (``RetryInfo``)."""
        for detail in self.details:
            if isinstance(detail, error_details_pb2.RetryInfo):
                return detail.retry_delay.ToTimedelta().total_seconds()
        return None

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The ``ErrorInfo`` detail (a machine-readable reason), if any."""
        for detail in self.details:
            if isinstance(detail, error_details_pb2.ErrorInfo):
                return detail
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"details={[type(d).__name__ for d in self.details]}, request_id={self.request_id!r})"
        )


class Cancelled(PostmeshError):
    """The call was cancelled (``CANCELLED``)."""


class Unknown(PostmeshError):
    """An error without a better code (``UNKNOWN``)."""


class InvalidArgument(PostmeshError):
    """The request is invalid (``INVALID_ARGUMENT``); see :attr:`field_violations`."""


class DeadlineExceeded(PostmeshError):
    """The call's deadline passed before it finished (``DEADLINE_EXCEEDED``)."""


class NotFound(PostmeshError):
    """The resource does not exist, or not for the caller (``NOT_FOUND``)."""


class AlreadyExists(PostmeshError):
    """The resource exists already (``ALREADY_EXISTS``)."""


class PermissionDenied(PostmeshError):
    """The caller may not do this (``PERMISSION_DENIED``)."""


class ResourceExhausted(PostmeshError):
    """A limit was reached (``RESOURCE_EXHAUSTED``); see :attr:`retry_delay`."""


class FailedPrecondition(PostmeshError):
    """The resource is not in a state that allows this (``FAILED_PRECONDITION``)."""


class Aborted(PostmeshError):
    """The call conflicted with another one (``ABORTED``)."""


class OutOfRange(PostmeshError):
    """A value is past the valid range (``OUT_OF_RANGE``)."""


class Unimplemented(PostmeshError):
    """The server does not implement this call (yet) (``UNIMPLEMENTED``)."""


class Internal(PostmeshError):
    """The server failed (``INTERNAL``); the request id helps find out why."""


class Unavailable(PostmeshError):
    """The server could not be reached or is overloaded (``UNAVAILABLE``)."""


class DataLoss(PostmeshError):
    """Data was lost or corrupted (``DATA_LOSS``)."""


class Unauthenticated(PostmeshError):
    """No credential, or one that was refused (``UNAUTHENTICATED``)."""


ERRORS_BY_CODE: dict[grpc.StatusCode, type[PostmeshError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}

_Pairs = Iterable[tuple[str, "str | bytes"]]


def from_rpc_error(error: grpc.RpcError) -> PostmeshError:
    """The :class:`PostmeshError` for an error raised by grpc (sync or asyncio)."""
    code = grpc.StatusCode.UNKNOWN
    text = str(error)
    trailing: _Pairs = ()
    initial: _Pairs = ()
    if isinstance(error, grpc.aio.AioRpcError):
        code, text = error.code(), error.details() or ""
        trailing = _pairs(error.trailing_metadata())
        initial = _pairs(error.initial_metadata())
    elif isinstance(error, grpc.Call):
        code, text = error.code(), error.details() or ""
        trailing = _pairs(error.trailing_metadata())
        initial = _pairs(error.initial_metadata())
    return from_status(code, text, trailing, initial)


def from_status(
    code: grpc.StatusCode,
    text: str,
    trailing: _Pairs = (),
    initial: _Pairs = (),
) -> PostmeshError:
    """The :class:`PostmeshError` for a status and the call's metadata."""
    trailing, initial = list(trailing), list(initial)
    details: list[Message] = []
    for key, value in trailing:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            text = status.message or text
            details = [decode_detail(detail) for detail in status.details]
    request_id = next(
        (str(value) for key, value in [*initial, *trailing] if key == REQUEST_ID_KEY),
        None,
    )
    return ERRORS_BY_CODE.get(code, Unknown)(code, text, details, request_id)


def decode_detail(detail: any_pb2.Any) -> Message:
    """A ``google.rpc`` detail as its own message type; unknown types stay ``Any``."""
    for detail_type in _DETAIL_TYPES:
        if detail.TypeName() == detail_type.DESCRIPTOR.full_name:
            decoded = detail_type()
            detail.Unpack(decoded)
            return decoded
    return detail


def _pairs(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, str | bytes]]:
    """Metadata (grpc's tuple of pairs or grpc.aio's ``Metadata``) as pairs."""
    return [(str(key), value) for key, value in metadata or ()]
