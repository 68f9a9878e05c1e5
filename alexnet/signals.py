"""Graceful stop: SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before preemption) ask the run to stop.

The training loop finishes its current step, writes a checkpoint, finishes the W&B run and exits with
128 + the signal's number; running the same command again resumes. A second Ctrl-C interrupts at once.
Under submitit (Hydra's SLURM launcher) the signal submitit uses to requeue a job (USR2 by default) is caught
the same way, and after the checkpoint submitit's own handler requeues the job, which then resumes.
"""
from __future__ import annotations

import logging
import signal
import threading

from alexnet.errors import StopNow, exit_at_once_on_ctrl_c

log = logging.getLogger("alexnet")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SUBMITIT_REQUEUE = "checkpoint_and_try_requeue"  # the name of submitit's handler


class StopSignals:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._requeue: dict = {}  # signal -> submitit's requeue handler

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return self
        for signum in (*STOP_SIGNALS, signal.SIGUSR2):
            previous = signal.getsignal(signum)
            if getattr(previous, "__name__", "") == SUBMITIT_REQUEUE:
                self._requeue[signum] = previous
            elif signum not in STOP_SIGNALS:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self.signum is not None:  # stopping: a Ctrl-C while W&B finishes ends the process, quietly
            exit_at_once_on_ctrl_c()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            exit_at_once_on_ctrl_c()  # a third ends the process, while W&B and the last write finish
            raise StopNow("stopped at once by a second Ctrl-C, without a new checkpoint")
        self.signum = signum
        then = "submitit requeues the job" if signum in self._requeue else "run the same command again to resume"
        log.warning("received %s: finishing this step, then checkpointing and stopping (%s)",
                    signal.Signals(signum).name, then)

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def stop(self) -> None:
        """After the checkpoint: let submitit requeue the job if its signal came, else exit 128 + signal."""
        requeue = self._requeue.get(self.signum)
        self.__exit__()
        if requeue is not None:
            requeue(self.signum, None)  # requeues, then exits
        raise SystemExit(self.exit_code)
