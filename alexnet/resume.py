"""Exact, truthful resume: the random state a checkpoint holds, and whether a config may continue a checkpoint.

A run killed and started again with the same command continues in its own run dir (see alexnet/rundir.py),
so its checkpoints, metrics.jsonl and W&B run carry on. A checkpoint continues only under the config it was
trained with, up to the fields in `MAY_CHANGE`: otherwise one record would describe two trainings.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from alexnet.config import flatten
from alexnet.errors import RunDirRefused

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


# What a resumed run may change: where it runs, how fast, how long (see below), how it logs. Everything else
# shapes the weights, so a change would make the record lie about what was trained.
MAY_CHANGE = ("trainer.epochs", "trainer.resume", "trainer.device", "trainer.strategy", "trainer.compile",
              "trainer.channels_last", "trainer.cudnn_benchmark", "trainer.tf32", "trainer.deterministic",
              "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps", "trainer.save_checkpoints",
              "trainer.limit_test_images", "data.root", "data.cache_dir", "data.download", "data.eval_batch_size",
              "wandb.", "fail_fast")
# Schedules whose shape depends on trainer.epochs: a longer run would change the lr of steps already taken.
EPOCH_SHAPED_SCHEDULES = ("cosine",)


class ResumeMismatch(RunDirRefused):
    """A checkpoint and a config that disagree on what was trained."""


def may_change(key: str) -> bool:
    """Whether a resumed run may change `key` (a dotted config key), as MAY_CHANGE lists it."""
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in MAY_CHANGE)


# Fields added to the schema after checkpoints were written, with the value that trains as before they existed:
# a checkpoint without the key was trained with that value.
ADDED_FIELDS = {"data.random_erasing": 0.0, "data.crop_scale": 1.0, "trainer.ema_decay": None}


def config_differences(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """(key, checkpoint's value, current value) for every key that differs and may not change on resume."""
    old, new = flatten(saved), flatten(now)
    old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **old}
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))
    scheduler = new.get("scheduler.name")
    def allowed(key: str) -> bool:
        if key == "trainer.epochs" and scheduler in EPOCH_SHAPED_SCHEDULES:
            return False
        return may_change(key)
    return [(k, old.get(k, "<absent>"), new.get(k, "<absent>")) for k in differing if not allowed(k)]


def check_compatible(path, saved: dict, now: dict) -> None:
    """Stop (exit 2) before anything is loaded or written if the checkpoint was trained with another config."""
    differences = config_differences(saved, now)
    if not differences:
        return
    lines = "\n".join(f"  {k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in differences)
    why = ("" if not any(k == "trainer.epochs" for k, _, _ in differences) else
           "\n(trainer.epochs may change on resume, but not under a cosine schedule: its lr depends on the total.)")
    raise ResumeMismatch(
        f"cannot resume {path}: it was trained with another config, and one record cannot describe both:\n"
        f"{lines}{why}\nFix: run it with its own config to continue it, or start a new run elsewhere: "
        f"trainer.resume=never with a fresh hydra.run.dir (hydra.sweep.dir with -m).")
