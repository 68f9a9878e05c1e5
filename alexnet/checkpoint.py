"""Checkpoints that cannot be half-written or silently corrupt, loadable with `torch.load(weights_only=True)`.

`save_checkpoint` writes to a temporary file, fsyncs, keeps the previous checkpoint as `<name>.prev.pt`, then
renames the new one into place: at every instant one complete checkpoint exists. Each file carries a SHA-256
digest of its content; `load_checkpoint` checks it, because torch.load notices a truncated file but not a
flipped byte in the middle. `load_latest` falls back to the previous checkpoint when the last one is damaged.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

from alexnet.errors import UserError, first_line

log = logging.getLogger(__name__)
DIGEST_KEY = "sha256"


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read."""


class NotACheckpoint(CheckpointError):
    """A file that torch can read but that is no checkpoint of alexnet.run."""


def digest(state) -> str:
    """SHA-256 over the content in a fixed order: tensors by dtype, shape and bytes, other values by repr."""
    h = hashlib.sha256()

    def visit(value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(b"{")
            for k in sorted(value, key=str):
                h.update(repr(k).encode())
                visit(value[k])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                visit(v)
            h.update(b"]")
        else:
            h.update(repr(value).encode())

    visit({k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict, keep_previous: bool = True) -> None:
    """Write `state` to `path` atomically; the old file becomes `<name>.prev.pt` when `keep_previous`.

    A failed write (disk full, read-only) leaves the existing checkpoints as they were and raises
    CheckpointError.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({**state, DIGEST_KEY: digest(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # e.g. its folder is a file
            tmp.unlink(missing_ok=True)
        kept = [str(p) for p in (path, previous_path(path)) if p.exists()]
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}. "
            f"{'The previous checkpoint ' + ' and '.join(kept) + ' is intact' if kept else 'No checkpoint is lost'}"
            f"; free space (or fix the permissions) and run the same command again to resume.") from e


def to_host(state):
    """A copy of `state` in host memory that training can no longer change: tensors copied (from a GPU into
    pinned memory, all copies queued, then one wait), everything else as is."""
    copies = []

    def copy(value):
        if isinstance(value, torch.Tensor):
            if value.device.type == "cpu":
                return value.detach().clone()
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            copies.append(host.copy_(value.detach(), non_blocking=True))
            return host
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value

    host_state = copy(state)
    if copies and torch.cuda.is_available():
        torch.cuda.synchronize()
    return host_state


class CheckpointWriter:
    """`save_checkpoint` on a background thread, so that training goes on while a checkpoint is hashed, written
    and fsynced (a second or two for AlexNet: longer than a GPU epoch of fast_cifar). The training thread only
    copies the state to host memory. One write at a time, in order: `save` first waits for the last one. A
    failed write raises its CheckpointError at the next `save` or at `wait`, which a run calls before it reads a
    checkpoint back and before it ends."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: Path, state: dict, keep_previous: bool = True) -> None:
        self.wait()
        host_state = to_host(state)
        self._thread = threading.Thread(target=self._write, args=(path, host_state, keep_previous),
                                        name=f"checkpoint {path.name}")  # not a daemon: exit waits for it
        self._thread.start()

    def _write(self, path: Path, state: dict, keep_previous: bool) -> None:
        try:
            save_checkpoint(path, state, keep_previous)
        except BaseException as e:  # handed to the training thread
            self._error = e

    def wait(self) -> None:
        """Until the last write is on disk; raises its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def load_checkpoint(path: Path, map_location="cpu", mmap: bool = False, verify: bool = True) -> dict:
    """Load and verify one checkpoint; raises CheckpointError if it is unreadable or its digest is wrong."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a checkpoint: "
                              f"{type(e).__name__}: {first_line(e)})") from e
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        what = f"a {type(state).__name__}" if not isinstance(state, dict) else f"keys {sorted(map(str, state))[:6]}"
        raise NotACheckpoint(f"{path} is not a checkpoint written by alexnet.run (it holds {what}, not a model "
                              f"and its config)")
    if verify and DIGEST_KEY in state and digest(state) != state[DIGEST_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its SHA-256 digest")
    if verify and DIGEST_KEY not in state and state.get("format", 1) != 1:  # format 2 always has one
        raise CheckpointError(f"checkpoint {path} is corrupt: it has no SHA-256 digest to check its content by")
    return state


def load_latest(path: Path, map_location="cpu") -> tuple[dict, Path] | None:
    """The newest intact checkpoint of `path` and its `.prev` twin, warning when it has to fall back."""
    previous = previous_path(path)
    if not path.exists() and not previous.exists():
        return None
    problem = "is missing" if not path.exists() else None
    if path.exists():
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as e:
            problem = str(e)
    if not previous.exists():
        raise CheckpointError(f"{problem}, and there is no previous checkpoint {previous} to fall back to. "
                              f"Fix: pass trainer.resume=never to start over, or trainer.resume=PATH.")
    try:
        state = load_checkpoint(previous, map_location)
    except CheckpointError as e:
        raise CheckpointError(f"{problem}; the previous checkpoint is damaged too: {e}. "
                              f"Fix: pass trainer.resume=never to start over, or trainer.resume=PATH.") from e
    log.warning("%s %s; resuming from the previous checkpoint %s instead", path,
                problem if problem == "is missing" else f"cannot be used ({problem})", previous)
    return state, previous


def check_writable(directory: Path, need_bytes: int) -> None:
    """Stop before training when `directory` cannot take a checkpoint (not writable, or too little space)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"the run dir {directory} is not writable ({e.strerror or e}). Fix: run from a "
                              f"writable directory, or set hydra.run.dir=PATH (hydra.sweep.dir for -m).") from e
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise CheckpointError(
            f"{directory} has {free / 2**20:.0f} MiB free but checkpoints need about {need_bytes / 2**20:.0f} MiB "
            f"(last, previous and best). Fix: free space, or set hydra.run.dir to a disk with room.")

