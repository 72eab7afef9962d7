"""Idempotent calls are retried on UNAVAILABLE, others are not.

A small in-process gRPC server stands in for the user service here, since
a real one cannot be made to fail on demand: it answers UNAVAILABLE a given
number of times before it answers properly, and counts the attempts.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

import postmesh
from postmesh.user.v1 import user_pb2

API_KEY = "pm_" + "k" * 40


class FlakyUsers:
    """GetProfile fails ``failures`` times, then answers; Register always fails."""

    def __init__(self) -> None:
        self.failures = 0
        self.attempts: Counter[str] = Counter()
        self.authorization: list[str | bytes | None] = []
        self._lock = threading.Lock()

    def _attempt(self, method: str, context: grpc.ServicerContext) -> int:
        with self._lock:
            self.attempts[method] += 1
            self.authorization.append(dict(context.invocation_metadata()).get("authorization"))
            return self.attempts[method]

    def get_profile(self, request: user_pb2.GetProfileRequest, context: grpc.ServicerContext) -> user_pb2.GetProfileResponse:
        if self._attempt("GetProfile", context) <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return user_pb2.GetProfileResponse(user=user_pb2.User(display_name="Flaky"))

    def register(self, request: user_pb2.RegisterRequest, context: grpc.ServicerContext) -> user_pb2.RegisterResponse:
        self._attempt("Register", context)
        context.abort(grpc.StatusCode.UNAVAILABLE, "draining")


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyUsers, str]]:
    users = FlakyUsers()
    handler = grpc.method_handlers_generic_handler(
        "postmesh.user.v1.UserService",
        {
            "GetProfile": grpc.unary_unary_rpc_method_handler(
                users.get_profile,
                request_deserializer=user_pb2.GetProfileRequest.FromString,
                response_serializer=user_pb2.GetProfileResponse.SerializeToString,
            ),
            "Register": grpc.unary_unary_rpc_method_handler(
                users.register,
                request_deserializer=user_pb2.RegisterRequest.FromString,
                response_serializer=user_pb2.RegisterResponse.SerializeToString,
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield users, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_an_idempotent_call_is_retried_until_it_succeeds(flaky: tuple[FlakyUsers, str]) -> None:
    users, target = flaky
    users.failures = 2
    with postmesh.Client(target, api_key=API_KEY) as client:
        answer = client.users.GetProfile(user_pb2.GetProfileRequest())
    assert answer.user.display_name == "Flaky"
    assert users.attempts["GetProfile"] == 3
    assert users.authorization == [f"Bearer {API_KEY}"] * 3, "every attempt carries the credential"


def test_an_idempotent_call_is_retried_with_asyncio(flaky: tuple[FlakyUsers, str]) -> None:
    users, target = flaky
    users.failures = 2

    async def call() -> user_pb2.GetProfileResponse:
        async with postmesh.AsyncClient(target, token="token") as client:
            return await client.users.GetProfile(user_pb2.GetProfileRequest())

    assert asyncio.run(call()).user.display_name == "Flaky"
    assert users.attempts["GetProfile"] == 3


def test_retries_are_bounded(flaky: tuple[FlakyUsers, str]) -> None:
    users, target = flaky
    users.failures = 100
    policy = postmesh.RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    with postmesh.Client(target, retry=policy) as client:
        with pytest.raises(postmesh.Unavailable) as raised:
            client.users.GetProfile(user_pb2.GetProfileRequest())
    assert raised.value.message == "draining"
    assert users.attempts["GetProfile"] == 3


def test_a_call_that_is_not_idempotent_is_tried_once(flaky: tuple[FlakyUsers, str]) -> None:
    users, target = flaky
    with postmesh.Client(target) as client:
        with pytest.raises(postmesh.Unavailable):
            client.users.Register(user_pb2.RegisterRequest(email="a@example.com"))
    assert users.attempts["Register"] == 1


def test_retries_can_be_turned_off(flaky: tuple[FlakyUsers, str]) -> None:
    users, target = flaky
    users.failures = 1
    with postmesh.Client(target, retry=None) as client:
        with pytest.raises(postmesh.Unavailable):
            client.users.GetProfile(user_pb2.GetProfileRequest())
    assert users.attempts["GetProfile"] == 1


def test_retry_policies_stay_within_what_grpc_honours() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        postmesh.RetryPolicy(max_attempts=6)
