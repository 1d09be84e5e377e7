"""How the agent reaches the server: the websocket URL, the reconnect delays (websockets' backoff, every
delay jittered), and the websockets logger with the node secret redacted."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator

import websockets.client

WS_PATH = "/ws/agent/"
JITTER = 0.5


class _RedactAuthorization(logging.Filter):
    """websockets logs every handshake header at DEBUG, the node secret included."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "<redacted>")
        return True


ws_log = logging.getLogger("fleet.agent.ws")
ws_log.addFilter(_RedactAuthorization())


def ws_url(server: str) -> str:
    """``http(s)://host[/prefix]`` → ``ws(s)://host[/prefix]/ws/agent/``."""
    server = server.rstrip("/")
    if server.startswith("https://"):
        return "wss://" + server[len("https://"):] + WS_PATH
    if server.startswith("http://"):
        return "ws://" + server[len("http://"):] + WS_PATH
    raise ValueError(f"server URL {server!r} must start with http:// or https://")


def backoff_delays() -> Iterator[float]:
    """websockets' backoff series, with its ``WEBSOCKETS_BACKOFF_*`` variables read now, and every delay
    jittered (FLEET_AGENT_BACKOFF_JITTER, default 0.5: each delay is drawn from [d × (1 - 0.5), d]).

    The library reads them once at import; reading them per call lets a test or a wrapper set them
    after import and still get the library's own algorithm. The library randomises only its first delay
    (0 to 5 s); after that every agent that lost the server at the same moment retries on the same
    schedule, so a server back after an outage would meet them all within those first 5 s, again and
    again. Jittering every delay spreads the returning fleet over the whole interval.
    """

    def setting(name: str, default: float) -> float:
        return float(os.environ.get(f"WEBSOCKETS_BACKOFF_{name}", default))

    jitter = min(1.0, max(0.0, float(os.environ.get("FLEET_AGENT_BACKOFF_JITTER", JITTER))))
    series = websockets.client.backoff(
        initial_delay=setting("INITIAL_DELAY", websockets.client.BACKOFF_INITIAL_DELAY),
        min_delay=setting("MIN_DELAY", websockets.client.BACKOFF_MIN_DELAY),
        max_delay=setting("MAX_DELAY", websockets.client.BACKOFF_MAX_DELAY),
        factor=setting("FACTOR", websockets.client.BACKOFF_FACTOR),
    )
    yield next(series)  # already random
    for delay in series:
        yield delay * (1.0 - jitter * random.random())
