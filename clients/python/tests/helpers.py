"""Types and helpers the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

PASSWORD = "violet-ocean-lantern-42"


@dataclass(frozen=True)
class Server:
    """A running ``postmesh dev``: its gRPC and HTTP addresses."""

    target: str
    http: str


@dataclass(frozen=True)
class User:
    """A registered user and an access token (Admin of its own workspace)."""

    email: str
    password: str
    token: str


def unique_email() -> str:
    return f"sdk-{uuid.uuid4().hex[:12]}@example.com"
