"""Server streams are consumed, and deadlines are honoured on them."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from datetime import datetime, timedelta, timezone
from types import ModuleType

import pytest
from google.protobuf import timestamp_pb2

import postmesh
from postmesh.content.v1 import content_pb2
from postmesh.social.v1 import social_pb2
from postmesh.type.v1 import platform_pb2

from helpers import Server, User

# Far below the time a scheduled post waits, far above a call's overhead.
SHORT_DEADLINE = 0.5


def webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def connect_webhook(client: postmesh.Client, url: str, secret: str) -> str:
    """Connects a webhook account (no network call) and returns its id."""
    answer = client.social.ConnectAccount(
        social_pb2.ConnectAccountRequest(
            platform=platform_pb2.PLATFORM_WEBHOOK, credentials={"url": url, "secret": secret}
        )
    )
    return answer.account.id


def scheduled_post(client: postmesh.Client) -> str:
    """A post scheduled a month ahead, so its status stream never ends."""
    account = connect_webhook(client, "http://127.0.0.1:9/scheduled", webhook_secret())
    publish_at = timestamp_pb2.Timestamp()
    publish_at.FromDatetime(datetime.now(timezone.utc) + timedelta(days=30))
    post = client.content.CreatePost(
        content_pb2.CreatePostRequest(text="later", target_account_ids=[account], publish_at=publish_at)
    ).post
    assert post.status == content_pb2.POST_STATUS_SCHEDULED
    return post.id


def test_watch_post_status_streams_until_settled(client: postmesh.Client, quickstart: ModuleType) -> None:
    secret = webhook_secret()
    receiver = quickstart.Receiver(secret)
    try:
        account = connect_webhook(client, receiver.url("/stream"), secret)
        post = client.content.CreatePost(
            content_pb2.CreatePostRequest(text="streamed", target_account_ids=[account])
        ).post
        updates = [
            update.status
            for update in client.content.WatchPostStatus(content_pb2.WatchPostStatusRequest(id=post.id))
        ]
    finally:
        receiver.close()
    assert updates, "the stream sends the current status first"
    assert all(update.post_id == post.id for update in updates)
    assert [update.settled for update in updates] == [False] * (len(updates) - 1) + [True]
    assert updates[-1].status == content_pb2.POST_STATUS_POSTED


def test_a_short_deadline_ends_a_stream_that_would_not_end(client: postmesh.Client) -> None:
    post_id = scheduled_post(client)
    received = []
    started = time.monotonic()
    with pytest.raises(postmesh.DeadlineExceeded):
        for update in client.content.WatchPostStatus(
            content_pb2.WatchPostStatusRequest(id=post_id), timeout=SHORT_DEADLINE
        ):
            received.append(update.status.status)
    elapsed = time.monotonic() - started
    assert received == [content_pb2.POST_STATUS_SCHEDULED], "the current status came before the deadline"
    assert SHORT_DEADLINE <= elapsed < SHORT_DEADLINE + 5


def test_the_clients_default_stream_deadline_applies(server: Server, user: User, client: postmesh.Client) -> None:
    post_id = scheduled_post(client)
    with postmesh.Client(server.target, token=user.token, stream_timeout=SHORT_DEADLINE) as short:
        stream = short.content.WatchPostStatus(content_pb2.WatchPostStatusRequest(id=post_id))
        assert next(stream).status.status == content_pb2.POST_STATUS_SCHEDULED
        with pytest.raises(postmesh.DeadlineExceeded):
            next(stream)


def test_a_short_deadline_ends_a_stream_with_asyncio(server: Server, user: User, client: postmesh.Client) -> None:
    post_id = scheduled_post(client)

    async def watch() -> list[content_pb2.PostStatus.ValueType]:
        received = []
        async with postmesh.AsyncClient(server.target, token=user.token) as aclient:
            async for update in aclient.content.WatchPostStatus(
                content_pb2.WatchPostStatusRequest(id=post_id), timeout=SHORT_DEADLINE
            ):
                received.append(update.status.status)
        return received

    started = time.monotonic()
    with pytest.raises(postmesh.DeadlineExceeded):
        asyncio.run(watch())
    assert SHORT_DEADLINE <= time.monotonic() - started < SHORT_DEADLINE + 5


def test_a_stream_can_be_cancelled(client: postmesh.Client) -> None:
    post_id = scheduled_post(client)
    stream = client.content.WatchPostStatus(content_pb2.WatchPostStatusRequest(id=post_id))
    assert next(stream).status.status == content_pb2.POST_STATUS_SCHEDULED
    stream.cancel()
    with pytest.raises(postmesh.Cancelled):
        next(stream)
