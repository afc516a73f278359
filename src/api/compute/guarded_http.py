"""uvicorn's httptools protocol with a deadline on request headers: uvicorn times out an idle
keep-alive connection but not one that connects and sends nothing, or trickles its headers,
which could hold connections forever (api.header_timeout_s). It also marks a request whose
body came whole with its headers (BODY_ARRIVED in the scope), so that reading it needs no
timer (limits.read_body)."""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llamarig.api.compute.limits import BODY_ARRIVED


def guarded(header_timeout_s: float) -> type[HttpToolsProtocol]:
    class HeaderDeadline(HttpToolsProtocol):
        # One timer per connection, checked lazily: a request sets a timestamp rather than
        # cancelling and making a timer twice (measured: 8 % of a 1-token request's CPU).
        _timer = None
        _waiting_since: float | None = None  # loop time the connection began waiting for headers
        _in_hand = 0  # requests whose headers came and whose answer has not ended (pipelining: several)

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            since = self._waiting_since
            due = (since if since is not None else self.loop.time()) + header_timeout_s
            if since is not None and self.loop.time() >= due:
                self.logger.info("closed a connection that sent no complete request headers within %g s "
                                 "(api.header_timeout_s)", header_timeout_s)
                self.transport.close()
                return
            self._timer = self.loop.call_at(due, self._check)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._waiting_since = self.loop.time()
            self._timer = self.loop.call_at(self._waiting_since + header_timeout_s, self._check)

        def on_headers_complete(self) -> None:
            self._in_hand += 1
            self._waiting_since = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.scope[BODY_ARRIVED] = True  # (the app task has not run yet when it came with the headers)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._in_hand -= 1
            if not self._in_hand:
                self._waiting_since = self.loop.time()  # the next request's headers get the same time

        def connection_lost(self, exc) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

    return HeaderDeadline
