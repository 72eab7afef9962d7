"""The quick start, as the example runs it and as asyncio code."""

from __future__ import annotations

import asyncio
import base64
import secrets
from types import ModuleType

import pytest

import postmesh
from postmesh.content.v1 import content_pb2
from postmesh.social.v1 import social_pb2
from postmesh.type.v1 import platform_pb2
from postmesh.user.v1 import user_pb2

from helpers import PASSWORD, Server, User, unique_email


def assert_posted_to_both(status: content_pb2.PublishingStatus, deliveries: list[object]) -> None:
    assert status.settled
    assert content_pb2.PostStatus.Name(status.status) == "POST_STATUS_POSTED"
    assert [content_pb2.TargetStatus.Name(t.status) for t in status.targets] == ["TARGET_STATUS_POSTED"] * 2
    assert sorted(getattr(d, "path") for d in deliveries) == ["/first", "/second"]
    assert all(getattr(d, "signature_valid") for d in deliveries)


def test_example_registers_then_logs_in_and_publishes_to_both_accounts(
    server: Server, quickstart: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTMESH_API_KEY", raising=False)
    monkeypatch.setenv("POSTMESH_EMAIL", unique_email())
    monkeypatch.setenv("POSTMESH_PASSWORD", PASSWORD)

    first = quickstart.main(server.target)  # registers the user
    assert_posted_to_both(first.status, first.deliveries)

    second = quickstart.main(server.target)  # logs in
    assert_posted_to_both(second.status, second.deliveries)
    assert second.status.post_id != first.status.post_id


def test_example_with_an_api_key(
    server: Server, client: postmesh.Client, quickstart: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = client.users.CreateApiKey(
        user_pb2.CreateApiKeyRequest(name="quick start", scopes=["accounts:write", "posts:write", "posts:read"])
    )
    assert key.secret.startswith("pm_")
    monkeypatch.setenv("POSTMESH_API_KEY", key.secret)
    outcome = quickstart.main(server.target)
    assert_posted_to_both(outcome.status, outcome.deliveries)


def test_the_quick_start_with_asyncio(server: Server, user: User, quickstart: ModuleType) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = quickstart.Receiver(secret)

    async def publish() -> tuple[content_pb2.PublishingStatus, list[content_pb2.PublishingStatus]]:
        async with postmesh.AsyncClient(server.target) as client:
            await client.login(user.email, user.password)
            accounts = [
                (
                    await client.social.ConnectAccount(
                        social_pb2.ConnectAccountRequest(
                            platform=platform_pb2.PLATFORM_WEBHOOK,
                            credentials={"url": receiver.url(path), "secret": secret},
                        )
                    )
                ).account
                for path in ("/first", "/second")
            ]
            created = await client.content.CreatePost(
                content_pb2.CreatePostRequest(
                    text="Hello from asyncio", target_account_ids=[a.id for a in accounts]
                )
            )
            updates = [
                update.status
                async for update in client.content.WatchPostStatus(
                    content_pb2.WatchPostStatusRequest(id=created.post.id), timeout=60
                )
            ]
            final = await client.content.GetPostStatus(content_pb2.GetPostStatusRequest(id=created.post.id))
            return final.status, updates

    try:
        final, updates = asyncio.run(publish())
        deliveries = receiver.wait_for(2, timeout=10)
    finally:
        receiver.close()
    assert updates[-1].status == final.status
    assert not any(update.settled for update in updates[:-1])
    assert_posted_to_both(final, deliveries)
    assert {d.text for d in deliveries} == {"Hello from asyncio"}
