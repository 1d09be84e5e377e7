"""`python -m fleet.serve [daphne options] fleet.asgi:application`: Daphne's own command line, with one
protocol option changed (and one expected warning kept off the terminal).

Autobahn, under Daphne, fails a connection by dropping TCP (``failByDrop``): a frame over the
websocket message limit (1 MiB, Daphne's default) then reaches the agent as an abnormal close with no
code, and it cannot tell why. With ``failByDrop=False`` it sends the close frame the RFC asks for:
1009 "message too big", with the limit in the reason.
"""

from __future__ import annotations

import sys
import warnings

from daphne import server as daphne_server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory


class _ClosingWebSocketFactory(WebSocketFactory):
    def setProtocolOptions(self, **options) -> None:  # noqa: N802 - Autobahn's name
        super().setProtocolOptions(failByDrop=False, **options)


def main(argv: list[str] | None = None) -> None:
    daphne_server.WebSocketFactory = _ClosingWebSocketFactory
    # Static files (WhiteNoise, small) are file iterators that Django's ASGI handler reads in a thread: it
    # warns about that on the first one, which is expected here and not something to put on the terminal.
    warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")
    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
