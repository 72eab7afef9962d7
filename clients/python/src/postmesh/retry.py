"""Which calls are retried, and how.

The contract marks reads ``NO_SIDE_EFFECTS`` and writes whose repetition has
no further effect ``IDEMPOTENT`` (``option idempotency_level``); only those
are retried, only when the answer is ``UNAVAILABLE`` (the server could not be
reached, or is draining or overloaded), with jittered exponential back-off,
within the call's deadline. Anything else (``CreatePost`` without an
idempotency key, ``RefreshToken``, ...) is tried once.

The retries themselves are gRPC's own (a ``retryPolicy`` per method in the
channel's service config), so they behave the same for sync and asyncio
calls and for server streams that failed before their first message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import descriptor, descriptor_pb2

# gRPC ignores retry policies with more attempts than this.
MAX_ATTEMPTS_LIMIT = 5

RETRIED_LEVELS = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried.

    Attributes:
        max_attempts: tries in all, the first included (2 to 5).
        initial_backoff: seconds before the first retry; each retry waits a
            random time up to the current back-off.
        max_backoff: the longest back-off, in seconds.
        backoff_multiplier: how the back-off grows from one retry to the next.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be 2 to {MAX_ATTEMPTS_LIMIT}, not {self.max_attempts}")
        if self.initial_backoff <= 0 or self.max_backoff <= 0:
            raise ValueError("initial_backoff and max_backoff must be positive")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be positive")


def retried_methods(services: Iterable[descriptor.ServiceDescriptor]) -> list[tuple[str, str]]:
    """``(service, method)`` of every method the contract marks safe to repeat."""
    return [
        (service.full_name, method.name)
        for service in services
        for method in service.methods
        if method.GetOptions().idempotency_level in RETRIED_LEVELS
    ]


def service_config(policy: RetryPolicy | None, services: Iterable[descriptor.ServiceDescriptor]) -> str:
    """The channel's service config (JSON): ``policy`` for every retried method."""
    if policy is None:
        return json.dumps({"methodConfig": []})
    names = [{"service": service, "method": method} for service, method in retried_methods(services)]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": policy.max_attempts,
                        "initialBackoff": _seconds(policy.initial_backoff),
                        "maxBackoff": _seconds(policy.max_backoff),
                        "backoffMultiplier": policy.backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def _seconds(value: float) -> str:
    """A duration in the service config's notation (``"0.2s"``)."""
    return f"{value:.9f}".rstrip("0").rstrip(".") + "s"
