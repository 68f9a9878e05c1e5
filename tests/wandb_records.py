"""Read back what an offline W&B run logged, from its `run-*.wandb` file.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of
chunks, each with a 7-byte header (CRC32, little-endian length, type FULL/FIRST/MIDDLE/LAST). A record's
chunks concatenate to one serialized `wandb_internal_pb2.Record`.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room left in the block for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero fill at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # one dict per logged step
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    metrics: dict = field(default_factory=dict)  # define_metric: name or glob -> {"step_metric", "summary"}
    artifacts: list = field(default_factory=list)  # {"name", "type", "aliases", "metadata"}


def _put(target: dict, item) -> None:
    """Set one item: nested keys (["test/predictions", "nrows"]) become nested dicts."""
    *parents, last = list(item.nested_key) if item.nested_key else [item.key]
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = json.loads(item.value_json)


def read_run(path: Path, wait: float = 0.0) -> OfflineRun:
    """The run as logged. `wait`: seconds to wait for its exit record, as W&B's service writes the file after
    `run.finish()` returns, so a run finished in this process may not be all on disk yet."""
    deadline = time.monotonic() + wait
    while True:
        run = _read_run(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def _read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            for item in r.config.update:
                _put(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _put(run.config, item)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                _put(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(run.summary, item)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "metric":
            m = record.metric
            summary = [f.name for f, value in m.summary.ListFields() if value]
            run.metrics[m.name or m.glob_name] = {"step_metric": m.step_metric, "summary": summary}
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                  "metadata": json.loads(a.metadata) if a.metadata else {}})
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
