"""Clean stops on SIGINT and SIGTERM for the node and the replay (rclpy's own handlers are off).

rclpy's handlers shut the context down inside the signal, while a worker thread may still be
publishing ("publisher's context is invalid") and a replay's main loop never looks at the context.
Here a signal only sets an event: the process then stops its threads, destroys its node and shuts
the context down, in that order. A launcher and a terminal both send Ctrl-C, so a second signal is
ignored; a third one ends the process at once (a stuck shutdown can always be interrupted).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

FORCE_AFTER = 3  # signals


def stop_on_signals(stop: threading.Event, name: str, also=None) -> None:
    """SIGINT/SIGTERM set ``stop`` and call ``also()`` (optional); the third signal exits with 130."""
    count = [0]

    def handler(signum, frame) -> None:
        count[0] += 1
        if count[0] >= FORCE_AFTER:
            print(f"[{name}] {signal.Signals(signum).name} x{count[0]}: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        if not stop.is_set():
            stop.set()
            if also is not None:
                also()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)


def ignore_signals_while_exiting() -> None:
    """After the context is shut down: the process is exiting anyway, and Python restores the default
    handlers while it finalizes (a SIGTERM then would end it with -15 instead of its exit code)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
