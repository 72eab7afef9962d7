"""postmesh: the Python client of the postmesh API.

``Client`` (blocking) and ``AsyncClient`` (asyncio) hold a channel and the
generated stub of every service (``client.users``, ``client.content``,
``client.social``, ...); the messages are in the generated modules
(``postmesh.content.v1.content_pb2``, ...). Failed calls raise the
exceptions of :mod:`postmesh.errors`.
"""

from postmesh.client import DEFAULT_TIMEOUT, AsyncClient, Client, __version__
from postmesh.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PostmeshError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from postmesh.retry import RetryPolicy

__all__ = [
    "DEFAULT_TIMEOUT",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PostmeshError",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "__version__",
]
