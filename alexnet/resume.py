"""Exact resume: the random state a checkpoint holds, and which run dir a repeated command continues.

A run killed and started again with the same command continues in its own run dir (Hydra's
`hydra.run.dir` goes through `interrupted_run_dir`), so its checkpoints, metrics.jsonl and W&B run carry on.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import torch


def rng_state(data_generator_state: torch.Tensor | None, device: torch.device) -> dict:
    """Every random state training draws from: python, numpy, torch (CPU, and the training GPU's) and the data
    order. Only this device's CUDA state: a resume may see fewer GPUs (another machine, another rank set)."""
    import numpy as np  # here, not at the top: the run-dir resolver below is used before torch is needed
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached": float(cached)},
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "data": data_generator_state}


def restore_rng_state(state: dict, device: torch.device) -> torch.Tensor | None:
    """Restore what `rng_state` saved, the CUDA state onto this device; returns the data generator's state."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # checkpoints before 2026-11-26 held every visible GPU's state
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    return state["data"]


def _comparable(overrides) -> list[str]:
    return [o for o in overrides if not o.startswith(("trainer.resume=", "hydra."))]


def is_resumable(run_dir: Path) -> bool:
    """A run that stopped before finishing (signal, kill, error) and left a checkpoint."""
    checkpoints = run_dir / "checkpoints"
    if not any((checkpoints / name).exists() for name in ("last.pt", "last.prev.pt")):
        return False
    try:
        last = (run_dir / "metrics.jsonl").read_text().rstrip("\n").rsplit("\n", 1)[-1]
        return json.loads(last) != {"_exit": 0}
    except (OSError, ValueError):
        return True  # no record, or its last line cut short by a kill: the checkpoint decides


def interrupted_run_dir(root: str, fresh: str, overrides, resume: str) -> str:
    """The run dir for a single run: with trainer.resume=auto, the newest interrupted run under `root` made by
    the same command (the same overrides, trainer.resume aside); otherwise `root/fresh`.

    Under torchrun only rank 0 has a run dir; the other ranks get a scratch dir for Hydra's own files and
    learn rank 0's run dir from it.
    """
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        return str(Path(tempfile.gettempdir()) / f"alexnet-rank{rank}-of-{os.getppid()}")
    if resume == "auto":
        wanted = _comparable(list(overrides))
        for saved in sorted(Path(root).glob("*/*/.hydra/overrides.yaml"), reverse=True):  # newest first
            run_dir = saved.parent.parent
            try:
                same = _comparable(yaml.safe_load(saved.read_text()) or []) == wanted
            except (OSError, yaml.YAMLError):
                continue
            if same and is_resumable(run_dir):
                return str(run_dir)
    return f"{root}/{fresh}"
