"""The clients: one channel to a postmesh server and a typed stub per service.

``Client`` is for ordinary (blocking) code, ``AsyncClient`` for asyncio.
Both expose the same attributes (``users``, ``content``, ``social``,
``analytics``, ``ai``, ``notifications``, ``webhooks``), each the generated
stub of that service, so every RPC and message is typed from the contract.
What a client adds to every call is in :mod:`postmesh._interceptors` (auth,
default deadlines, typed errors) and :mod:`postmesh.retry` (retries of
idempotent calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import descriptor

from postmesh import _interceptors
from postmesh.ai.v1 import ai_pb2, ai_pb2_grpc
from postmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from postmesh.content.v1 import content_pb2, content_pb2_grpc
from postmesh.notification.v1 import notification_pb2, notification_pb2_grpc
from postmesh.retry import RetryPolicy, service_config
from postmesh.social.v1 import social_pb2, social_pb2_grpc
from postmesh.user.v1 import user_pb2, user_pb2_grpc
from postmesh.webhook.v1 import webhook_pb2, webhook_pb2_grpc

if TYPE_CHECKING:
    from postmesh.ai.v1.ai_pb2_grpc import AiServiceAsyncStub
    from postmesh.analytics.v1.analytics_pb2_grpc import AnalyticsServiceAsyncStub
    from postmesh.content.v1.content_pb2_grpc import ContentServiceAsyncStub
    from postmesh.notification.v1.notification_pb2_grpc import NotificationServiceAsyncStub
    from postmesh.social.v1.social_pb2_grpc import SocialServiceAsyncStub
    from postmesh.user.v1.user_pb2_grpc import UserServiceAsyncStub
    from postmesh.webhook.v1.webhook_pb2_grpc import WebhookServiceAsyncStub

__version__ = "0.1.0"

DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take unless the client or the call says otherwise."""

API_KEY_PREFIX = "pm_"

SERVICES: tuple[descriptor.ServiceDescriptor, ...] = (
    user_pb2.DESCRIPTOR.services_by_name["UserService"],
    content_pb2.DESCRIPTOR.services_by_name["ContentService"],
    social_pb2.DESCRIPTOR.services_by_name["SocialService"],
    analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    ai_pb2.DESCRIPTOR.services_by_name["AiService"],
    notification_pb2.DESCRIPTOR.services_by_name["NotificationService"],
    webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"],
)


def _credential(api_key: str | None, token: str | None) -> _interceptors.Credential:
    if api_key is not None and token is not None:
        raise ValueError("pass api_key or token, not both")
    if api_key is not None and not api_key.startswith(API_KEY_PREFIX):
        raise ValueError(f"an API key starts with {API_KEY_PREFIX!r}; pass access tokens as token=")
    return _interceptors.Credential(api_key if api_key is not None else token)


def _address(target: str, credentials: grpc.ChannelCredentials | None) -> tuple[str, grpc.ChannelCredentials | None]:
    """``host:port`` and the channel credentials: ``https://`` means TLS with
    the system's roots, ``http://`` or no scheme plaintext (unless
    credentials are given)."""
    if target.startswith("https://"):
        return target.removeprefix("https://").rstrip("/"), credentials or grpc.ssl_channel_credentials()
    return target.removeprefix("http://").rstrip("/"), credentials


def _channel_options(retry: RetryPolicy | None, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [
        ("grpc.primary_user_agent", f"postmesh-python/{__version__}"),
        ("grpc.enable_retries", 1 if retry is not None else 0),
        ("grpc.service_config", service_config(retry, SERVICES)),
        *options,
    ]


class Client:
    """A blocking client of a postmesh server.

    ::

        client = Client("127.0.0.1:50051", api_key="pm_...")
        profile = client.users.GetProfile(user_pb2.GetProfileRequest())

    Args:
        target: ``host:port`` (plaintext), or ``https://host[:port]`` (TLS).
        api_key: an API key (``pm_...``), sent as ``authorization: Bearer``.
        token: an access token (from Register, Login or RefreshToken).
            Neither, for the public calls (or call :meth:`login` first).
        timeout: default deadline of unary calls, in seconds (``None``: none).
            A call's own ``timeout=`` wins.
        stream_timeout: default deadline of streams (``None``: they stay open
            until the server ends them).
        retry: how idempotent calls are retried on ``UNAVAILABLE``; ``None``
            turns retries off.
        credentials: channel credentials (TLS), instead of the scheme's.
        options: extra gRPC channel options.

    Failed calls raise :class:`postmesh.errors.PostmeshError` subclasses.
    Use the client as a context manager, or call :meth:`close`.
    """

    users: user_pb2_grpc.UserServiceStub
    content: content_pb2_grpc.ContentServiceStub
    social: social_pb2_grpc.SocialServiceStub
    analytics: analytics_pb2_grpc.AnalyticsServiceStub
    ai: ai_pb2_grpc.AiServiceStub
    notifications: notification_pb2_grpc.NotificationServiceStub
    webhooks: webhook_pb2_grpc.WebhookServiceStub

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        stream_timeout: float | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._credential = _credential(api_key, token)
        address, channel_credentials = _address(target, credentials)
        channel_options = _channel_options(retry, options)
        if channel_credentials is None:
            self._raw_channel = grpc.insecure_channel(address, options=channel_options)
        else:
            self._raw_channel = grpc.secure_channel(address, channel_credentials, options=channel_options)
        interceptor = _interceptors.SyncInterceptor(
            self._credential, _interceptors.Deadlines(unary=timeout, stream=stream_timeout)
        )
        self.channel = grpc.intercept_channel(self._raw_channel, interceptor)
        self.users = user_pb2_grpc.UserServiceStub(self.channel)
        self.content = content_pb2_grpc.ContentServiceStub(self.channel)
        self.social = social_pb2_grpc.SocialServiceStub(self.channel)
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        self.ai = ai_pb2_grpc.AiServiceStub(self.channel)
        self.notifications = notification_pb2_grpc.NotificationServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)

    def use_token(self, token: str | None) -> None:
        """Sends ``token`` (an access token or API key) on the following calls."""
        self._credential.value = token

    def login(self, email: str, password: str, workspace_id: str = "") -> user_pb2.LoginResponse:
        """Signs in and, unless the account asks for a second factor (the
        answer then holds a ``two_factor_challenge`` for ``VerifyLogin``),
        sends the new access token on the following calls."""
        answer = self.users.Login(user_pb2.LoginRequest(email=email, password=password, workspace_id=workspace_id))
        if answer.HasField("tokens"):
            self.use_token(answer.tokens.access_token)
        return answer

    def register(self, email: str, password: str, display_name: str) -> user_pb2.RegisterResponse:
        """Creates an account and sends its access token on the following calls."""
        answer = self.users.Register(
            user_pb2.RegisterRequest(email=email, password=password, display_name=display_name)
        )
        self.use_token(answer.tokens.access_token)
        return answer

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """An asyncio client of a postmesh server; the arguments are those of
    :class:`Client`.

    ::

        async with AsyncClient("127.0.0.1:50051", api_key="pm_...") as client:
            profile = await client.users.GetProfile(user_pb2.GetProfileRequest())
            async for update in client.content.WatchPostStatus(request):
                ...
    """

    users: UserServiceAsyncStub
    content: ContentServiceAsyncStub
    social: SocialServiceAsyncStub
    analytics: AnalyticsServiceAsyncStub
    ai: AiServiceAsyncStub
    notifications: NotificationServiceAsyncStub
    webhooks: WebhookServiceAsyncStub

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        stream_timeout: float | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._credential = _credential(api_key, token)
        address, channel_credentials = _address(target, credentials)
        channel_options = _channel_options(retry, options)
        interceptors = _interceptors.async_interceptors(
            self._credential, _interceptors.Deadlines(unary=timeout, stream=stream_timeout)
        )
        if channel_credentials is None:
            self.channel = grpc.aio.insecure_channel(address, options=channel_options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(
                address, channel_credentials, options=channel_options, interceptors=interceptors
            )
        self.users = user_pb2_grpc.UserServiceStub(self.channel)
        self.content = content_pb2_grpc.ContentServiceStub(self.channel)
        self.social = social_pb2_grpc.SocialServiceStub(self.channel)
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        self.ai = ai_pb2_grpc.AiServiceStub(self.channel)
        self.notifications = notification_pb2_grpc.NotificationServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)

    def use_token(self, token: str | None) -> None:
        """Sends ``token`` (an access token or API key) on the following calls."""
        self._credential.value = token

    async def login(self, email: str, password: str, workspace_id: str = "") -> user_pb2.LoginResponse:
        """See :meth:`Client.login`."""
        answer = await self.users.Login(
            user_pb2.LoginRequest(email=email, password=password, workspace_id=workspace_id)
        )
        if answer.HasField("tokens"):
            self.use_token(answer.tokens.access_token)
        return answer

    async def register(self, email: str, password: str, display_name: str) -> user_pb2.RegisterResponse:
        """See :meth:`Client.register`."""
        answer = await self.users.Register(
            user_pb2.RegisterRequest(email=email, password=password, display_name=display_name)
        )
        self.use_token(answer.tokens.access_token)
        return answer

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
