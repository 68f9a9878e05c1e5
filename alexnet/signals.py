"""Graceful stop: SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before preemption) ask the run to stop.

The training loop finishes its current step, writes a checkpoint, finishes the W&B run and exits with
128 + the signal's number; running the same command again resumes. A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("alexnet")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        log.warning("received %s: finishing this step, then checkpointing and stopping (run the same command "
                    "again to resume)", signal.Signals(signum).name)

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)
