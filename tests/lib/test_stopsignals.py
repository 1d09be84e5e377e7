"""StopSignals: SIGTERM and SIGINT set the event of a main thread that waits on it, in a real process, even
when the signal lands while that thread holds the event's lock (where a handler calling ``event.set()``
deadlocks: `make demo`'s hang on SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.integration.harness import ROOT

SCRIPT = """
import threading, time
from fleet.lib.stopsignals import StopSignals
stop = threading.Event()
signals = StopSignals(stop).install()
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # the kernel may pick any thread
print("ready", flush=True)
while not stop.wait(0.001):
    pass
signals.close()
print("stopped", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_main_thread_busy_in_event_wait(sig: int) -> None:
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(sig)
        output, _ = process.communicate(timeout=20)
        assert output.strip() == "stopped" and process.returncode == 0


# The state Event.wait() is in between taking its lock and releasing it: a handler that runs here and calls
# stop.set() waits forever on the lock its own thread holds (the old demo handler; checked by hand).
HELD_LOCK = """
import os, signal, threading
from fleet.lib.stopsignals import StopSignals
stop = threading.Event()
signals = StopSignals(stop).install()
with stop._cond:
    os.kill(os.getpid(), signal.SIGNUM)
    for _ in range(10000):
        pass  # the handler runs between these bytecodes, with the lock held
print("stopped" if stop.wait(10) else "not set", flush=True)
signals.close()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_event_lock_is_held_does_not_deadlock(sig: str) -> None:
    process = subprocess.Popen([sys.executable, "-c", HELD_LOCK.replace("SIGNUM", sig)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()  # deadlocked: SIGTERM would reach the same handler
            process.wait()
    assert output.strip() == "stopped" and process.returncode == 0
