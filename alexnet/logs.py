"""The console's share of the log: what a person follows (a short time stamp, warnings marked, no config dump).
The run's log file keeps every line in full, the resolved config included. Hydra installs both handlers from
conf/hydra/job_logging/alexnet.yaml; `hydra.verbose=alexnet` puts the file-only lines on the console too.
"""
from __future__ import annotations

import logging
import os

from tqdm import tqdm

FILE_ONLY = {"file_only": True}  # `log.info(..., extra=FILE_ONLY)`: the log file, not the console


class ConsoleFilter(logging.Filter):
    """`warnings`: this handler's share, warnings and errors (stderr) or the rest (stdout)."""

    def __init__(self, warnings: bool = False) -> None:
        super().__init__()
        self.warnings = warnings

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.WARNING) != self.warnings:
            return False
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 speaks for all; the others only warn
            return self.warnings
        return not getattr(record, "file_only", False) or logging.getLogger("alexnet").isEnabledFor(logging.DEBUG)


class ConsoleHandler(logging.StreamHandler):
    """Writes through tqdm, which lifts a progress bar off the line first and draws it again below."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()  # as StreamHandler does: a pipe or file gets each line now, not at exit (os._exit loses it)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class ConsoleFormatter(logging.Formatter):
    """`[12:00:01] message`, and `warning:` / `error:` before what needs attention."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, message = text.partition("] ")
            text = f"{stamp}] {record.levelname.lower()}: {message}"
        return text
