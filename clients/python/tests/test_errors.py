"""Failures surface as typed exceptions with the server's details."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import postmesh
from postmesh.content.v1 import content_pb2
from postmesh.user.v1 import user_pb2

from helpers import PASSWORD, Server, User


def test_a_wrong_token_raises_unauthenticated(server: Server) -> None:
    with postmesh.Client(server.target, token="not-a-token") as client:
        with pytest.raises(postmesh.Unauthenticated) as raised:
            client.users.GetProfile(user_pb2.GetProfileRequest())
    error = raised.value
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in error.message
    assert error.request_id, "the server's x-request-id is kept for support"
    assert isinstance(error.__cause__, grpc.RpcError)


def test_a_wrong_api_key_raises_unauthenticated(server: Server) -> None:
    with postmesh.Client(server.target, api_key="pm_" + "x" * 40) as client:
        with pytest.raises(postmesh.Unauthenticated):
            client.content.ListPosts(content_pb2.ListPostsRequest())


def test_no_credential_raises_unauthenticated_with_asyncio(server: Server) -> None:
    async def call() -> None:
        async with postmesh.AsyncClient(server.target) as client:
            await client.users.GetProfile(user_pb2.GetProfileRequest())

    with pytest.raises(postmesh.Unauthenticated) as raised:
        asyncio.run(call())
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_an_invalid_argument_names_the_field(server: Server) -> None:
    with postmesh.Client(server.target) as client:
        with pytest.raises(postmesh.InvalidArgument) as raised:
            client.users.Register(
                user_pb2.RegisterRequest(email="not-an-email", password=PASSWORD, display_name="Ada")
            )
    error = raised.value
    assert [violation.field for violation in error.field_violations] == ["email"]
    assert "email" in error.field_violations[0].description
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error).startswith("INVALID_ARGUMENT: ")


def test_an_invalid_argument_names_the_field_with_asyncio(server: Server, user: User) -> None:
    async def call() -> None:
        async with postmesh.AsyncClient(server.target, token=user.token) as client:
            await client.content.CreatePost(content_pb2.CreatePostRequest(text="no accounts"))

    with pytest.raises(postmesh.InvalidArgument) as raised:
        asyncio.run(call())
    assert "target_account_ids" in [violation.field for violation in raised.value.field_violations]


def test_other_codes_have_their_own_class(client: postmesh.Client) -> None:
    with pytest.raises(postmesh.NotFound) as raised:
        client.content.GetPost(content_pb2.GetPostRequest(id="01900000-0000-7000-8000-000000000000"))
    assert isinstance(raised.value, postmesh.PostmeshError)
    assert raised.value.details == []


def test_credentials_are_checked_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match="not both"):
        postmesh.Client("127.0.0.1:1", api_key="pm_x", token="t")
    with pytest.raises(ValueError, match="starts with 'pm_'"):
        postmesh.Client("127.0.0.1:1", api_key="eyJhbGciOi")
