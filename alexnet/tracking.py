"""Run tracking, from one place: every value goes to the run dir's metrics.jsonl and, when it can, to W&B.

metrics.jsonl is the local record (one JSON object per line: `{"_step": N, key: value, ...}` for history,
`{"_summary": {...}}` for final values); it is written whatever happens to W&B. A W&B failure is reported
once as a warning and never stops or loses a run.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def api_key_configured() -> bool:
    """True when W&B would find an API key: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """`auto` -> WANDB_MODE if set, else online with an API key and offline without one."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if api_key_configured() else "offline")


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class Tracker:
    def __init__(self, run_dir: Path, config: dict, mode: str, project: str, entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, name: str | None = None,
                 job_type: str = "train"):
        self.run_dir = Path(run_dir)
        self.metrics = open(self.run_dir / "metrics.jsonl", "a")
        self.start = time.time()
        self.run = None
        self.mode = resolve_mode(mode)
        if self.mode == "disabled":
            return
        init = dict(project=project, entity=entity, group=group, tags=list(tags or []), name=name,
                    job_type=job_type, config=config, dir=str(self.run_dir))
        self.run = self._start(self.mode, init)
        if self.run is None and self.mode == "online":  # keep it as an offline run that can be synced later
            self.mode = "offline"
            self.run = self._start(self.mode, init)
        if self.run is None:
            self.mode = "disabled"
            log.warning("W&B is off for this run; every value is still written to %s",
                        self.run_dir / "metrics.jsonl")
        elif self.mode == "offline":
            offline_dir = Path(self.run.dir).parent
            log.info("W&B run stored offline in %s; upload it later with: wandb sync %s", offline_dir, offline_dir)

    @staticmethod
    def _start(mode: str, init: dict):
        try:
            import wandb

            return wandb.init(mode=mode, **init)
        except Exception as e:  # no server, refused key, broken install: training goes on regardless
            log.warning("W&B could not start a run in %s mode (%s: %s)", mode, type(e).__name__, e)
            return None

    def _wandb(self, what: str, call) -> None:
        if self.run is None:
            return
        try:
            call(self.run)
        except Exception as e:
            log.warning("W&B %s failed (%s: %s); W&B logging stops for this run, metrics.jsonl goes on",
                        what, type(e).__name__, e)
            self.run = None

    def _write(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def log(self, metrics: dict, step: int) -> None:
        metrics = {k: _jsonable(v) for k, v in metrics.items()}
        self._write({"_step": step, "_runtime": round(time.time() - self.start, 3), **metrics})
        self._wandb("log", lambda run: run.log(metrics, step=step))

    def summary(self, metrics: dict) -> None:
        metrics = {k: _jsonable(v) for k, v in metrics.items()}
        self._write({"_summary": metrics})
        self._wandb("summary", lambda run: run.summary.update(metrics))

    def finish(self, exit_code: int = 0) -> None:
        self._wandb("finish", lambda run: run.finish(exit_code=exit_code))
        self.run = None
        self.metrics.close()
