"""SIGINT and SIGTERM as a ``threading.Event``, safely.

A Python signal handler runs in the main thread between bytecodes, possibly while that thread is inside
``event.wait()`` holding the event's non-reentrant lock: a handler that calls ``event.set()`` then
deadlocks (`make demo` hung on SIGTERM in 2 of 3 tries). Here the handler does nothing; the interpreter
writes the signal number to a wakeup socket, and a watcher thread reads it and sets the event.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """``install()`` from the main thread; ``event`` is set on the first SIGINT or SIGTERM; ``close()``
    puts the previous handlers back."""

    def __init__(self, event: threading.Event):
        self.event = event
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd = -1
        self._previous_handlers: dict[int, Any] = {}

    def install(self) -> StopSignals:
        for sig in SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, _no_op)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="stop-signals", daemon=True).start()
        return self

    def _watch(self) -> None:
        try:
            if self._reader.recv(1):
                self.event.set()
        except OSError:
            pass  # closed

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        try:
            self._reader.shutdown(socket.SHUT_RDWR)  # wakes the watcher if no signal came
        except OSError:
            pass
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._writer.close()
        self._reader.close()


def _no_op(signum: int, frame: object) -> None:
    """The wakeup socket carries the signal; this handler must not take any lock."""
