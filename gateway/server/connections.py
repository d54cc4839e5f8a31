"""Client connections in the gevent worker: keep-alive waits, lingering closes, and
the per-address count of unauthenticated connections (``MAX_CONNECTIONS_PER_ADDRESS``).
"""

from __future__ import annotations

import socket
from typing import Any

import gevent

from gateway.auth import AUTHENTICATED_ENVIRON_KEY


def linger(client: Any) -> None:
    """End a connection whose answer is sent but whose request was not read whole: stop
    writing, then read (and drop) what the client still sends for up to a second, so
    closing with unread bytes does not reset the connection before the client has read
    the answer."""
    try:
        client.shutdown(socket.SHUT_WR)
        with gevent.Timeout(1.0, False):  # type: ignore[arg-type]  # gevent's documented silent form; the stubs type only exceptions
            while client.recv(65536):
                pass
    except OSError:
        pass


class KeepAliveWait:
    """The wait for a kept-alive connection's next request (gunicorn's keep-alive
    timeout), registered so a draining worker can end it."""

    __slots__ = ("_idle", "timeout", "greenlet")

    def __init__(self, idle: dict[Any, KeepAliveWait], seconds: float) -> None:
        self._idle = idle
        # On expiry: no request, the connection closes. False is gevent's documented silent form.
        self.timeout = gevent.Timeout(seconds, False)  # type: ignore[arg-type]  # the stubs type only exceptions
        self.greenlet: Any = None

    def __enter__(self) -> KeepAliveWait:
        self.greenlet = gevent.getcurrent()
        self._idle[self.greenlet] = self
        self.timeout.start()
        return self

    def __exit__(self, typ: Any, value: Any, tb: Any) -> bool | None:
        self._idle.pop(self.greenlet, None)
        swallowed: bool | None = self.timeout.__exit__(typ, value, tb)
        return swallowed


class Connection:
    """One client connection counted by :class:`UnauthenticatedConnections`: its
    address and the WSGI environ of its current (latest) request."""

    __slots__ = ("address", "environ", "counted")

    def __init__(self, address: str) -> None:
        self.address = address
        self.environ: dict[str, Any] | None = None
        self.counted = True

    def admitted(self) -> bool:
        """Whether its current request passed the authentication hook."""
        environ = self.environ
        return environ is not None and environ.get(AUTHENTICATED_ENVIRON_KEY) is True


class UnauthenticatedConnections:
    """Per client address, the open connections no request has yet been admitted on,
    capped at ``cap`` (one worker's; greenlets only, so no lock).

    The authentication hook only marks its request's environ. Here that mark is read
    lazily: when the next request begins on the connection (:meth:`begin`), and when
    a new connection would exceed the cap (:meth:`open` re-checks the address's
    counted connections). A connection found admitted stops counting for good.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self._by_address: dict[str, set[Connection]] = {}

    def held(self, address: str) -> int:
        """How many connections ``address`` holds that count against the cap."""
        return len(self._by_address.get(address, ()))

    def open(self, address: str) -> Connection | None:
        """Count a new connection from ``address``; ``None``: over the cap, refuse it."""
        held = self._by_address.get(address)
        if held is not None and len(held) >= self.cap:
            for connection in [connection for connection in held if connection.admitted()]:
                self._settle(connection)
            if self.held(address) >= self.cap:
                return None
        connection = Connection(address)
        self._by_address.setdefault(address, set()).add(connection)
        return connection

    def begin(self, connection: Connection, environ: dict[str, Any]) -> None:
        """A request begins on ``connection`` (after the previous one, if any)."""
        if connection.counted:
            if connection.admitted():
                self._settle(connection)
            else:
                connection.environ = environ

    def close(self, connection: Connection) -> None:
        if connection.counted:
            self._settle(connection)

    def _settle(self, connection: Connection) -> None:
        """Stop counting ``connection`` (admitted, or closed)."""
        connection.counted = False
        connection.environ = None
        held = self._by_address.get(connection.address)
        if held is not None:
            held.discard(connection)
            if not held:
                del self._by_address[connection.address]
