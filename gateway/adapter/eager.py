"""Writes to a provider's socket that go out at once.

Twisted's TCP transport queues every write until the reactor's next writable
event: per WebSocket frame that is an ``epoll_ctl`` to watch the socket, a
loop turn, the ``send``, and another ``epoll_ctl`` to stop watching. Most
frames the gateway writes find the socket's send buffer empty, so they are
sent right away here, as asyncio's own transports do; only what the kernel
does not take is queued, and from then on Twisted's path (ordering, producer
pause, errors, close) is untouched.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["send_eagerly"]


class _EagerServer(tcp.Server):
    def write(self, data: bytes) -> None:
        if (type(data) is bytes and data and self.connected and not self._writeDisconnected
                and not self._tempDataLen and self.offset == len(self.dataBuffer)):
            sent = self.writeSomeData(data)
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
            # A lost connection: queued, so doWrite meets the error and closes as usual.
        super().write(data)


def send_eagerly(transport: Any) -> bool:
    """Make a plain TCP server transport send at once when nothing is queued ahead.

    Other transports (TLS, a PROXY-protocol wrapper) are left as they are."""
    if type(transport) is tcp.Server:
        transport.__class__ = _EagerServer
        return True
    return False
