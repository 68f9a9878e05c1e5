"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename over `path`: a crash mid-write never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """`mmap=True` reads tensors lazily: cheap when only the config is needed."""
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
