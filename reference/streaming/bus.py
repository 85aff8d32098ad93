"""The bus: the only door to fan-out, for the coordinator and the server alike.

Everything a coordinator does with events goes through a :class:`Bus`:
publish a run's events, subscribe a client (late, or resuming from an id),
fetch events the local hub no longer keeps, hand an ending found in storage
to the clients waiting here, say farewell on shutdown, and ask the
coordinator that owns a run elsewhere to cancel it. :class:`InMemoryBus`, the
default, serves one process with its :class:`~streaming.hub.Hub` and needs
nothing installed; ``RedisBus`` (``redisbus.py``) shares events between
worker processes and keeps the same contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from .events import Event
from .hub import Hub, Message, Subscriber

#: What a coordinator does when another worker asks it to cancel a run.
CancelHandler = Callable[[str, str], None]


class Bus(ABC):
    """Fan-out of task events to clients; one per coordinator."""

    def __init__(self, hub: Hub) -> None:
        #: This process's subscribers; only the bus touches it.
        self.hub = hub

    # -- lifecycle ---------------------------------------------------------------

    def start(self, owner: str, on_cancel: CancelHandler) -> None:  # noqa: B027 - none in memory
        """Start what the bus runs in the background, for the coordinator ``owner``.

        ``on_cancel(key, reason)`` is called when another worker asks this one
        to cancel a run it owns.
        """

    async def ready(self) -> None:  # noqa: B027 - nothing to wait for in memory
        """Return once the bus is connected and serving (after :meth:`start`)."""

    async def close(self) -> None:  # noqa: B027 - nothing to stop in memory
        """Stop the background work; what is already published is delivered first."""

    async def problem(self) -> str | None:
        """Why the bus cannot be used now, or None (readiness; in memory it always can)."""
        return None

    # -- publishing ----------------------------------------------------------------

    def open(self, key: str) -> None:
        """A run of this process is about to publish on ``key``."""
        self.hub.open(key)

    def release(self, key: str) -> None:
        """That run ended without a final event published here (its process is stopping)."""
        self.hub.release(key)

    @abstractmethod
    async def publish(
        self, key: str, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message:
        """Publish an event of a run of this process to every client of ``key``, anywhere.

        ``json_data`` is the event's data already encoded (``events.encode_data``).
        """

    async def announce(self, key: str, event: Event) -> None:  # noqa: B027 - no one else in memory
        """Publish the final event of a run this process stopped to other processes' clients only.

        This process's own clients had the farewell instead; they reconnect
        and read the ending from storage.
        """

    def deliver(self, key: str, event: Event) -> None:
        """Give the clients of ``key`` here its ending, found in storage, unless they have it."""
        latest = self.hub.latest_id(key)
        if latest is None or latest < event.id:
            self.hub.publish(key, event, final=True)

    @abstractmethod
    async def request_cancel(self, owner: str, key: str, reason: str) -> None:
        """Ask the coordinator ``owner`` to cancel its run of ``key`` now."""

    # -- subscribing -----------------------------------------------------------------

    async def subscribe(
        self, key: str, *, after: int | None = None, final: Event | None = None
    ) -> Subscriber:
        """Register a client of ``key``: its latest event first, or every one after ``after``.

        ``final`` is the ending of a task that is over, read from storage.
        """
        if final is not None:
            return self.hub.subscribe_finished(key, final, after=after)
        return self.hub.subscribe(key, after=after)

    def kept_since(self, key: str) -> int | None:
        """Id of the oldest event of ``key`` this process keeps (None: none)."""
        return self.hub.kept_since(key)

    def recent(self, key: str) -> list[Message]:
        """The events of ``key`` this process keeps, oldest first."""
        return self.hub.recent(key)

    async def history(self, key: str, *, after: int, before: int | None) -> list[Message]:
        """Events of ``key`` with ids in (``after``, ``before``) that the bus itself still keeps."""
        return []

    # -- the rest ---------------------------------------------------------------------

    def say_farewell(self, make_event: Callable[[str, int], Event]) -> int:
        """End every stream of this process with a farewell (its own only)."""
        return self.hub.say_farewell(make_event)

    def notify(self, key: str, type: str, data: dict[str, Any]) -> int:
        """Give this process's clients of ``key`` a notice that does not end their streams."""
        return self.hub.notify(key, type, data)

    def watched_elsewhere(self) -> list[str]:
        """Keys with clients here whose run is not in this process."""
        return self.hub.watched_elsewhere()

    def stats(self) -> dict[str, int]:
        return self.hub.stats()

    def describe(self) -> dict[str, Any]:
        return {"bus": type(self).__name__, **self.stats()}


class InMemoryBus(Bus):
    """One process: publishing goes straight into the local hub.

    Clients of a run in another process get its ending from storage (the
    keeper's ``deliver``), not its events; a cancel for a run elsewhere is
    left in storage for its owner's keeper to find.
    """

    def __init__(self, hub: Hub | None = None) -> None:
        super().__init__(hub if hub is not None else Hub())

    async def publish(
        self, key: str, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message:
        return self.hub.publish(key, event, final=final, json_data=json_data)

    async def request_cancel(self, owner: str, key: str, reason: str) -> None:
        pass  # no channel to another process: the owner's keeper reads the request
