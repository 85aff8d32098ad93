"""The server's HTTP protocol: uvicorn's httptools protocol, with limits at the edge.

uvicorn reads a request head with neither a size limit nor a deadline, and
counts nothing before a request is complete. Tried from outside, that let
one client:

- hold the event loop for seconds with one header that never ends
  (httptools joins a header's pieces by copying them, so a header of n bytes
  costs about n² to read; 120 MB stalled every other client, and a lease
  lapsed while the loop was held);
- keep connections that sent half a request open for ever, and open enough
  of them to use up the process's file descriptors (every other client then
  got an empty reply).

:class:`EdgeProtocol` adds, before the parser sees a byte:

- a limit on a request head (request line and headers): past it the answer
  is 431 and the connection is closed, the parser having read at most one
  socket read past the limit;
- a deadline for a whole request head, like nginx's ``client_header_timeout``:
  from a connection's opening, or from the first byte of a later request on
  it, until its head is complete; past it, 408 and closed;
- a cap on one client's open connections, unfinished ones included: past
  it, 429 with ``Retry-After``, and closed at once.

A connection refused 431 or 408 is closed in stages, so that the client
reads its answer rather than a reset: the answer and a FIN, then what the
client still sends is dropped until it closes too, for :data:`LINGER`
seconds and :data:`LINGER_BYTES` at most, its slot held meanwhile. One refused 429 holds no slot and
does not linger.

WebSocket is not served: the server runs with ``ws="none"``, and the app
refuses an upgrade with a 4xx, so uvicorn's warning about an unsupported
upgrade is silenced here. Refusals are counted (``on_refusal``), not logged:
an attack must not fill the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .ops.limits import Slots

logger = logging.getLogger(__name__)

#: Seconds a refused connection is read (and its bytes dropped) before it is closed.
LINGER = 2.0
#: Bytes a refused connection may send and have dropped; past them it is closed
#: at once. A client that sent its request with the head gets its answer; one
#: that goes on sending after its refusal is not read at the server's expense.
LINGER_BYTES = 64 * 1024

#: ``_head_room`` once a request's headers are complete, and once the connection is refused.
_NOT_IN_HEAD = -1
_REFUSED = -2


class EdgeLimits:
    """The limits every connection of one server shares, and its count of them per client."""

    def __init__(
        self,
        *,
        header_bytes: int,
        header_timeout: float,
        connections_per_client: int | None,
        retry_after: int = 1,
        on_refusal: Callable[[str], None] | None = None,
        trusted_proxies: str = "127.0.0.1",
    ) -> None:
        if header_bytes < 1024 or header_timeout <= 0:
            raise ValueError(
                f"Cannot limit request heads to {header_bytes} bytes and {header_timeout}s: "
                "allow at least 1024 bytes and more than 0 seconds."
            )
        self.header_bytes = header_bytes
        self.header_timeout = header_timeout
        #: Open connections per client address, whatever state their request is in.
        self.connections = Slots(connections_per_client)
        self.retry_after = max(1, retry_after)
        self.on_refusal = on_refusal
        #: Peers that speak for many clients (uvicorn's forwarded_allow_ips):
        #: a proxy's connections are not one client's, and the app counts the
        #: clients behind it by their forwarded address instead.
        self._trusted = _networks(trusted_proxies)
        #: Connections reading a request head -> loop time it is due. Every
        #: head gets the same time, so the earliest is always first: one timer
        #: serves them all, as ``sse.Writers`` serves every stream.
        self._heads: OrderedDict[EdgeProtocol, float] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        #: Counted connections and their client's address (kept here, not on the
        #: connection: see EdgeProtocol.__init__).
        self._counted: dict[EdgeProtocol, str] = {}
        #: Refused connections closing in stages -> bytes they may still send.
        self._lingering: dict[EdgeProtocol, int] = {}

    def head_began(self, connection: EdgeProtocol) -> None:
        """``connection`` is reading a request head: due ``header_timeout`` from now, if not yet."""
        if connection in self._heads:
            return  # the first request's head has been due since the connection opened
        loop = asyncio.get_running_loop()
        due = loop.time() + self.header_timeout
        self._heads[connection] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire)

    def head_ended(self, connection: EdgeProtocol) -> None:
        """``connection``'s request head is complete, or it was refused."""
        self._heads.pop(connection, None)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        now = loop.time()
        while self._heads:
            connection, due = next(iter(self._heads.items()))
            if due > now:
                self._timer = loop.call_at(due, self._expire)
                return
            del self._heads[connection]
            try:
                connection.head_timed_out()
            except Exception:  # one connection's failure must not stop every deadline
                logger.exception("refusing a request head that timed out failed")

    def refused(self, reason: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(reason)

    def admit(self, connection: EdgeProtocol, address: str | None) -> bool:
        """Count a new connection toward its client's cap; False if the client is at it."""
        if address is None or not self.counts(address):
            return True
        if not self.connections.acquire(address):
            return False
        self._counted[connection] = address
        return True

    def forget(self, connection: EdgeProtocol) -> None:
        """``connection`` is gone: its slot is free, its head no longer due."""
        address = self._counted.pop(connection, None)
        if address is not None:
            self.connections.release(address)
        self._heads.pop(connection, None)
        self._lingering.pop(connection, None)

    def linger(self, connection: EdgeProtocol) -> None:
        """``connection`` was refused and closes in stages: it may send LINGER_BYTES more."""
        self._lingering[connection] = LINGER_BYTES

    def dropped(self, connection: EdgeProtocol, size: int) -> bool:
        """Count ``size`` bytes a refused connection sent; False once past LINGER_BYTES."""
        left = self._lingering.get(connection, 0) - size
        self._lingering[connection] = left
        return left >= 0

    def counts(self, address: str | None) -> bool:
        """Whether connections from ``address`` count toward one client's cap."""
        if address is None or self._trusted is None:
            return False  # a Unix socket, or every peer a trusted proxy ("*")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        return not any(ip in network for network in self._trusted)

    def protocol(self) -> type[EdgeProtocol]:
        """A protocol class for uvicorn's ``http`` setting, bound to these limits."""
        return type("EdgeProtocol", (EdgeProtocol,), {"edge": self})


def _networks(setting: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """uvicorn's ``forwarded_allow_ips`` as networks; None for ``*`` (every peer)."""
    entries = [entry.strip() for entry in setting.split(",") if entry.strip()]
    if "*" in entries:
        return None
    found = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a Unix socket path, or a name: not an address a peer has
    return found


class EdgeProtocol(HttpToolsProtocol):
    """One connection, refused at its edge when it breaks a limit of :attr:`edge`."""

    edge: ClassVar[EdgeLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One attribute, no more: uvicorn's protocol has 28, and from 30 on an
        # instance's attributes stop sharing their keys with every other
        # connection's (CPython's split dicts), at 1.3 KB more per stream.
        # Deadlines live in ``edge`` for the same reason.
        #: Bytes the request head being read may still take, or _NOT_IN_HEAD or _REFUSED.
        self._head_room = self.edge.header_bytes

    # -- the connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self._address()
        if not self.edge.admit(self, address):
            self.edge.refused("client_connections")
            self._refuse(
                429,
                f"Too many connections from {address}: at most "
                f"{self.edge.connections.limit} at once.",
                ((b"retry-after", str(self.edge.retry_after).encode()),),
                linger=False,  # it holds no slot: lingering, it would hold a file for nothing
            )
            return
        self.edge.head_began(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.forget(self)
        super().connection_lost(exc)

    def eof_received(self) -> None:
        """The client closed its side: a refused connection closes now, others as uvicorn's do."""
        if self._head_room == _REFUSED:
            self.transport.close()

    def _address(self) -> str | None:
        return self.client[0] if self.client else None

    def data_received(self, data: bytes) -> None:
        room = self._head_room
        if room >= 0:
            # Between requests, bytes that begin no message (a stray CRLF) would
            # otherwise hold a kept-alive connection open with no deadline.
            self.edge.head_began(self)
        if room == _NOT_IN_HEAD or len(data) <= room:
            if room != _NOT_IN_HEAD:
                self._head_room = room - len(data)
            super().data_received(data)
            return
        if room == _REFUSED:
            if not self.edge.dropped(self, len(data)):
                self.transport.abort()
            return
        # The head may end within the room left: read that much, and see.
        self._head_room = 0
        if room:
            super().data_received(data[:room])
        if self._head_room == _REFUSED or self.transport.is_closing():
            return
        if self._head_room == 0:  # the same head, still going, and out of room
            self.edge.refused("header_size")
            self._refuse(
                431,
                f"The request head is over {self.edge.header_bytes} bytes, this server's limit.",
            )
            return
        # Its headers ended (or a pipelined request began): read on.
        self.data_received(data[room:])

    # -- the parser's callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        # The first byte of a request: its head's deadline starts (the first
        # request's started with the connection). Its bytes have been counted
        # since the last request ended (on_message_complete).
        super().on_message_begin()
        self.edge.head_began(self)

    def on_headers_complete(self) -> None:
        self._head_room = _NOT_IN_HEAD
        self.edge.head_ended(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._head_room == _NOT_IN_HEAD:
            self._head_room = self.edge.header_bytes  # what follows is the next head

    def _should_upgrade(self) -> bool:
        """Never: WebSocket is not served, and a protocol handed over would keep its slot."""
        return False

    def _unsupported_upgrade_warning(self) -> None:
        """Say nothing: the app answers an upgrade it does not serve with a 4xx."""

    # -- refusing ---------------------------------------------------------------------

    def head_timed_out(self) -> None:
        """The request head was not complete in time (``EdgeLimits`` calls this)."""
        if self._head_room < 0:
            return
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            # A response is under way (a stream may last hours): the next head
            # cannot be read before it ends, so it is not late yet.
            self.edge.head_began(self)
            return
        self.edge.refused("header_timeout")
        self._refuse(408, f"The request head took over {self.edge.header_timeout:g}s to arrive.")

    def _refuse(
        self,
        status: int,
        reason: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        *,
        linger: bool = True,
    ) -> None:
        """Answer ``status`` with ``reason`` and close, unless a response is already under way.

        ``linger``: close in stages (below). Only a connection that holds one of
        its client's slots lingers, so that lingering ones are capped too.
        """
        self._head_room = _REFUSED
        self.edge.head_ended(self)
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            body = reason.encode()
            head = [
                STATUS_LINE[status],
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n",
                *(name + b": " + value + b"\r\n" for name, value in headers),
                b"\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            if linger and self.transport.can_write_eof():
                # A staged close (RFC 9112, 9.6): closing with the client's
                # bytes unread would reset the connection, and a reset can
                # destroy the answer before the client reads it. So the answer
                # goes out with a FIN, what the client still sends is read and
                # dropped (data_received, once refused), and the connection
                # closes when the client closes its side, or LINGER from now.
                self.transport.write_eof()
                self.edge.linger(self)
                asyncio.get_running_loop().call_later(LINGER, self.transport.close)
                return
        self.transport.close()
