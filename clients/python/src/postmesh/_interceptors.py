"""What every call passes through, for sync and asyncio channels alike:

1. the caller's credential as ``authorization: Bearer ...`` (unless the
   call's own metadata already has an ``authorization``);
2. the client's default deadline when the call names none (unary calls and
   streams have separate defaults, since a stream may rightly stay open);
3. grpc's errors turned into :mod:`postmesh.errors` exceptions.

Retries are not here: gRPC retries idempotent calls itself, from the
channel's service config (see :mod:`postmesh.retry`), inside the deadline
set here.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, cast

import grpc
import grpc.aio

from postmesh.errors import from_rpc_error

if TYPE_CHECKING:
    from grpc import _CallFuture, _CallIterator, _Metadata

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

AUTHORIZATION = "authorization"


class Credential:
    """The bearer credential calls carry: an access token or an API key.

    Shared by a client and its interceptor, so that signing in after the
    client was made (``Client.login``) changes what the next call sends.
    """

    def __init__(self, value: str | None = None) -> None:
        self.value = value

    def header(self) -> tuple[str, str] | None:
        return (AUTHORIZATION, f"Bearer {self.value}") if self.value else None


@dataclass(frozen=True)
class Deadlines:
    """Default seconds a call may take when it names no ``timeout``; ``None``
    means no deadline."""

    unary: float | None
    stream: float | None


def _with_credential(
    metadata: Iterable[tuple[str, str | bytes]] | None, credential: Credential
) -> list[tuple[str, str | bytes]]:
    pairs = list(metadata or ())
    header = credential.header()
    if header is not None and not any(key == AUTHORIZATION for key, _ in pairs):
        pairs.append(header)
    return pairs


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: _Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Credential, default deadline and typed errors for a sync channel."""

    def __init__(self, credential: Credential, deadlines: Deadlines) -> None:
        self._credential = credential
        self._deadlines = deadlines

    def _details(self, details: grpc.ClientCallDetails, default_timeout: float | None) -> _CallDetails:
        return _CallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else default_timeout,
            metadata=tuple(_with_credential(details.metadata, self._credential)),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Req], _CallFuture[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: _Req,
    ) -> _CallFuture[_Resp]:
        outcome = continuation(self._details(client_call_details, self._deadlines.unary), request)
        _raise_if_failed(outcome)
        return outcome

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[_Req]], _CallFuture[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_Req],
    ) -> _CallFuture[_Resp]:
        outcome = continuation(self._details(client_call_details, self._deadlines.unary), request_iterator)
        _raise_if_failed(outcome)
        return outcome

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Req], _CallIterator[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: _Req,
    ) -> _CallIterator[_Resp]:
        call = continuation(self._details(client_call_details, self._deadlines.stream), request)
        return cast("_CallIterator[_Resp]", ResponseStream(call))

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[_Req]], _CallIterator[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_Req],
    ) -> _CallIterator[_Resp]:
        call = continuation(self._details(client_call_details, self._deadlines.stream), request_iterator)
        return cast("_CallIterator[_Resp]", ResponseStream(call))


def _raise_if_failed(outcome: _CallFuture[_Resp]) -> None:
    """Raises the typed error of a finished call that failed. A call still in
    flight (``.future()``) is left alone: its result raises grpc's error."""
    if outcome.done():
        error = outcome.exception()
        if isinstance(error, grpc.RpcError):
            raise from_rpc_error(error) from error


class ResponseStream(Generic[_Resp]):
    """A sync server stream whose failures raise typed errors; otherwise the
    call grpc returned (``cancel()``, ``code()``, metadata, ...)."""

    def __init__(self, call: _CallIterator[_Resp]) -> None:
        self._call = call

    def __iter__(self) -> ResponseStream[_Resp]:
        return self

    def __next__(self) -> _Resp:
        try:
            return next(self._call)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def __getattr__(self, name: str) -> object:
        return getattr(self._call, name)


class _AsyncInterceptor:
    """What the grpc.aio interceptors below share. grpc.aio files an
    interceptor under the first kind of call it handles only, hence one
    class per kind."""

    def __init__(self, credential: Credential, deadlines: Deadlines) -> None:
        self._credential = credential
        self._deadlines = deadlines

    def _details(
        self, details: grpc.aio.ClientCallDetails, default_timeout: float | None
    ) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout if details.timeout is not None else default_timeout,
            grpc.aio.Metadata(*_with_credential(details.metadata, self._credential)),
            details.credentials,
            details.wait_for_ready,
        )


class _AsyncUnaryUnary(_AsyncInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Req], Awaitable[grpc.aio.UnaryUnaryCall[_Req, _Resp]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Req,
    ) -> _Resp | grpc.aio.UnaryUnaryCall[_Req, _Resp]:
        call = await continuation(self._details(client_call_details, self._deadlines.unary), request)
        try:
            return await call
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error


class _AsyncStreamUnary(_AsyncInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Req] | Iterable[_Req]],
            Awaitable[grpc.aio.StreamUnaryCall[_Req, _Resp]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Req] | Iterable[_Req],
    ) -> _Resp | grpc.aio.StreamUnaryCall[_Req, _Resp]:
        call = await continuation(self._details(client_call_details, self._deadlines.unary), request_iterator)
        try:
            return await call
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error


class _AsyncUnaryStream(_AsyncInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Req], Awaitable[grpc.aio.UnaryStreamCall[_Req, _Resp]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Req,
    ) -> AsyncIterator[_Resp] | grpc.aio.UnaryStreamCall[_Req, _Resp]:
        call = await continuation(self._details(client_call_details, self._deadlines.stream), request)
        return _typed_errors(call)


class _AsyncStreamStream(_AsyncInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Req] | Iterable[_Req]],
            Awaitable[grpc.aio.StreamStreamCall[_Req, _Resp]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Req] | Iterable[_Req],
    ) -> AsyncIterator[_Resp] | grpc.aio.StreamStreamCall[_Req, _Resp]:
        call = await continuation(self._details(client_call_details, self._deadlines.stream), request_iterator)
        return _typed_errors(call)


def async_interceptors(credential: Credential, deadlines: Deadlines) -> list[grpc.aio.ClientInterceptor]:
    """Credential, default deadline and typed errors for a grpc.aio channel."""
    return [
        _AsyncUnaryUnary(credential, deadlines),
        _AsyncUnaryStream(credential, deadlines),
        _AsyncStreamUnary(credential, deadlines),
        _AsyncStreamStream(credential, deadlines),
    ]


async def _typed_errors(responses: AsyncIterable[_Resp]) -> AsyncIterator[_Resp]:
    """The responses of a grpc.aio stream, its failure raised as a typed error."""
    try:
        async for response in responses:
            yield response
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
