"""The console's share of the log: what a person follows (a short time stamp, warnings marked, no config dump).
The run's log file keeps every line in full, the resolved config included. Hydra installs both handlers from
conf/hydra/job_logging/alexnet.yaml; `hydra.verbose=alexnet` puts the file-only lines on the console too.
"""
from __future__ import annotations

import logging
import os

FILE_ONLY = {"file_only": True}  # `log.info(..., extra=FILE_ONLY)`: the log file, not the console


class ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 speaks for all; the others only warn
            return record.levelno >= logging.WARNING
        return not getattr(record, "file_only", False) or logging.getLogger("alexnet").isEnabledFor(logging.DEBUG)


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
