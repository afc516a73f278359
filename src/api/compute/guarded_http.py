"""uvicorn's httptools protocol with a deadline on request headers: uvicorn times out an idle
keep-alive connection but not one that connects and sends nothing, or trickles its headers,
which could hold connections forever (api.header_timeout_s)."""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def guarded(header_timeout_s: float) -> type[HttpToolsProtocol]:
    class HeaderDeadline(HttpToolsProtocol):
        _deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self.logger.info("closed a connection that sent no complete request headers within %g s "
                             "(api.header_timeout_s)", header_timeout_s)
            self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers get the same time

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
