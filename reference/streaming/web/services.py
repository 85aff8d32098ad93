"""What the checks and handlers of one app share: the coordinator and the ops parts."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from .. import sse
from ..config import Config
from ..coordinator import Coordinator
from ..ops.guard import Guard
from ..ops.limits import Limits
from ..ops.metrics import Metrics
from ..ops.policy import Policy, load_policy


@dataclass(frozen=True, slots=True)
class Services:
    """One app's coordinator, its settings for the HTTP side, and the parts they make."""

    coordinator: Coordinator
    config: Config
    writers: sse.Writers
    metrics: Metrics
    policy: Policy
    guard: Guard
    limits: Limits

    @classmethod
    def build(cls, coordinator: Coordinator, config: Config) -> Services:
        metrics = Metrics.of(coordinator)
        return cls(
            coordinator=coordinator,
            config=config,
            writers=sse.Writers(keepalive=config.keepalive, write_deadline=config.write_deadline),
            metrics=metrics,
            policy=load_policy(config.authorization),
            guard=Guard.from_settings(
                cors_origins=tuple(config.cors_allowed_origins),
                cors_credentials=config.cors_allow_credentials,
                cors_max_age=config.cors_max_age,
            ),
            limits=Limits(
                max_connections=config.max_connections,
                max_connections_per_client=config.max_connections_per_client,
                max_subscribers_per_task=config.max_subscribers_per_task,
                streams_per_second=config.streams_per_second,
                stream_burst=config.stream_burst,
                posts_per_second=config.posts_per_second,
                post_burst=config.post_burst,
                retry_after=math.ceil(config.retry_ms / 1000),
                on_refusal=lambda kind: metrics.refused.labels(reason=kind).inc(),
            ),
        )

    def count_refusal(self, reason: str) -> None:
        self.metrics.refused.labels(reason=reason).inc()

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()
