"""The postmesh quick start: sign in, connect two accounts, publish a post to
both and watch it go out.

    cargo run --release -- dev                  # in the repository, another terminal
    python examples/quickstart.py

Settings (environment):
    POSTMESH_TARGET    the gRPC address (default 127.0.0.1:50051)
    POSTMESH_API_KEY   an API key (pm_...) with the scopes accounts:write,
                       posts:write and posts:read; without one the example
                       logs in as POSTMESH_EMAIL / POSTMESH_PASSWORD and
                       registers that user first if there is none

The two accounts are signed webhooks (postmesh's generic platform) pointing
at a tiny HTTP receiver this script starts on 127.0.0.1, so nothing outside
the machine is involved; the receiver checks each delivery's signature the
way a real one would (Standard Webhooks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import postmesh
from postmesh.content.v1 import content_pb2
from postmesh.social.v1 import social_pb2
from postmesh.type.v1 import platform_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "violet-ocean-lantern-42"


@dataclass(frozen=True)
class Delivery:
    """One post as the receiver got it."""

    path: str
    text: str
    signature_valid: bool


@dataclass
class Outcome:
    """What the quick start saw: the post's final status and the deliveries."""

    status: content_pb2.PublishingStatus
    deliveries: list[Delivery] = field(default_factory=list)


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 200 to every POST and
    keeps what it got."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                delivery = Delivery(
                    path=self.path,
                    text=str(json.loads(body).get("text", "")),
                    signature_valid=receiver.verify(
                        self.headers.get("webhook-id", ""),
                        self.headers.get("webhook-timestamp", ""),
                        body,
                        self.headers.get("webhook-signature", ""),
                    ),
                )
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")
                with receiver._arrived:
                    receiver.deliveries.append(delivery)
                    receiver._arrived.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep the example's output to the story

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def verify(self, message_id: str, timestamp: str, body: bytes, signatures: str) -> bool:
        """Standard Webhooks: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{message_id}.{timestamp}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return any(hmac.compare_digest(expected, given) for given in signatures.split())

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        """The deliveries, once there are ``count`` of them (or ``timeout`` passed)."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def sign_in(client: postmesh.Client, email: str, password: str) -> None:
    """Logs in, registering the user first if there is no such account."""
    try:
        answer = client.login(email, password)
    except postmesh.Unauthenticated:
        client.register(email, password, display_name="Quick start")
        return
    if not answer.HasField("tokens"):
        sys.exit(f"{email} uses two-factor sign-in; set POSTMESH_API_KEY instead")


def main(target: str | None = None) -> Outcome:
    target = target or os.environ.get("POSTMESH_TARGET", DEFAULT_TARGET)
    api_key = os.environ.get("POSTMESH_API_KEY")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = Receiver(secret)
    try:
        with postmesh.Client(target, api_key=api_key) as client:
            if api_key is None:
                sign_in(
                    client,
                    os.environ.get("POSTMESH_EMAIL", DEMO_EMAIL),
                    os.environ.get("POSTMESH_PASSWORD", DEMO_PASSWORD),
                )

            accounts = [
                client.social.ConnectAccount(
                    social_pb2.ConnectAccountRequest(
                        platform=platform_pb2.PLATFORM_WEBHOOK,
                        credentials={"url": receiver.url(path), "secret": secret},
                        display_name=f"Quick start {path}",
                    )
                ).account
                for path in ("/first", "/second")
            ]
            print("connected:", ", ".join(account.display_name for account in accounts))

            post = client.content.CreatePost(
                content_pb2.CreatePostRequest(
                    text="Hello from the **postmesh** quick start",
                    target_account_ids=[account.id for account in accounts],
                    # Makes the call safe to repeat (it is not retried otherwise).
                    idempotency_key=str(uuid.uuid4()),
                )
            ).post
            print("created post", post.id)

            status = content_pb2.PublishingStatus()
            for update in client.content.WatchPostStatus(
                content_pb2.WatchPostStatusRequest(id=post.id), timeout=60
            ):
                status = update.status
                print("status:", content_pb2.PostStatus.Name(status.status))
            for target_status in status.targets:
                print(
                    f"  {target_status.account_display_name}:",
                    content_pb2.TargetStatus.Name(target_status.status),
                )

        deliveries = receiver.wait_for(len(accounts), timeout=10)
        for delivery in deliveries:
            verdict = "signature valid" if delivery.signature_valid else "SIGNATURE INVALID"
            print(f"receiver got {delivery.text!r} on {delivery.path} ({verdict})")
        return Outcome(status=status, deliveries=deliveries)
    finally:
        receiver.close()


if __name__ == "__main__":
    try:
        outcome = main()
    except postmesh.PostmeshError as error:
        sys.exit(f"postmesh said {error.code.name}: {error.message}")
    sys.exit(0 if outcome.status.status == content_pb2.POST_STATUS_POSTED else 1)
