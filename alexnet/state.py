"""`TrainState`: everything a run is at one instant, and the checkpoint format that holds it.

A checkpoint is `TrainState.state_dict()` plus what the record needs (classes, the W&B run, metrics lines).
The state holds the best epoch's weights too, so each last.pt is the whole run so far: best.pt is an export of
them, and a resume from any checkpoint (an older one too) tests the best weights *of that history*.
`FORMAT` numbers the layout; `upgrade` reads older checkpoints' weights for evaluation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from alexnet.distributed import Dist
from alexnet.ema import WeightEMA
from alexnet.engine import EpochProgress
from alexnet.resume import restore_rng_state, rng_state

FORMAT = 2  # 2: named submodules (features.*, classifier.*), the config as given, the format number itself


@dataclass
class TrainState:
    model: torch.nn.Module  # the network itself (not a DDP or compiled wrapper: its keys are the checkpoint's)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict  # the config it is trained with, as given (`auto` switches unresolved): resume compares it
    precision: str  # what trainer.precision resolved to on this device
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    progress: EpochProgress = field(default_factory=EpochProgress)  # of the epoch under way
    best_val_acc: float | None = None  # the best finite validation accuracy so far
    best_weights: dict | None = None  # the model's state_dict at that epoch (a copy, on the model's device)
    best_epoch: int | None = None
    trained_seconds: float = 0.0  # training time of the finished epochs, evaluation and checkpoints excluded
    ema: WeightEMA | None = None  # the weights' moving average (trainer.ema_decay), which is then evaluated

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validation and test score, and best.pt holds: the moving average if there is one."""
        return self.model if self.ema is None else self.ema.module

    def state_dict(self, data_generator_state: torch.Tensor | None, device: torch.device, dist: Dist = Dist()) -> dict:
        """The state to continue from (a collective with DDP: the epoch's sums are over all ranks)."""
        return {"format": FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "progress": self.progress.state_dict(dist),
                "best_val_acc": self.best_val_acc, "best_weights": self.best_weights, "best_epoch": self.best_epoch,
                "trained_seconds": self.trained_seconds,
                # the data generator's position matters mid-epoch only: a new epoch seeds its own
                "rng": rng_state(data_generator_state if self.progress.batch else None, device),
                "precision": self.precision, "config": self.config,
                "ema": None if self.ema is None else self.ema.state_dict()}

    def load_state_dict(self, saved: dict, device: torch.device, dist: Dist = Dist()) -> torch.Tensor | None:
        """Continue from `saved` (checked compatible beforehand); returns the data generator's state."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        restore_scaler(self.scaler, saved["scaler"], saved.get("precision"), self.precision)
        self.epoch, self.step = saved["epoch"], saved["step"]
        self.best_val_acc, self.trained_seconds = saved["best_val_acc"], saved["trained_seconds"]
        self.best_epoch, best = saved["best_epoch"], saved["best_weights"]
        self.best_weights = None if best is None else {k: v.to(device) for k, v in best.items()}
        self.progress = EpochProgress.from_state(saved["progress"], dist)
        if self.ema is not None:  # the config check made sure the checkpoint has one (same ema_decay)
            self.ema.load_state_dict(saved["ema"])
        return restore_rng_state(saved["rng"], device)

    def keep_as_best(self, val_acc: float) -> None:
        """The evaluated weights now (at the end of epoch `self.epoch`) are the best so far."""
        self.best_val_acc, self.best_epoch = val_acc, self.epoch
        self.best_weights = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}

    def weights_finite(self) -> bool:
        """Every parameter finite (one host sync): a checkpoint is only ever written from a finite state."""
        params = [p.detach() for p in self.model.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def restore_scaler(scaler: torch.amp.GradScaler, state: dict, saved_precision: str | None, precision: str) -> None:
    """The fp16 gradient scaler's state. A run may resume in another precision (`auto` means bf16 on one GPU and
    fp16 on an older one): a scaler that was off then starts fresh now, and finds its scale within a few steps."""
    if saved_precision not in (None, precision):
        logging.getLogger("alexnet").warning("resuming a %s run in %s%s", saved_precision, precision,
                                             ": the fp16 gradient scaler starts fresh" if scaler.is_enabled() else "")
    if scaler.is_enabled() and state:  # a disabled scaler saved {}: nothing to restore
        scaler.load_state_dict(state)


def upgrade(checkpoint: dict) -> dict:
    """A checkpoint of an older format, read as the current one as far as evaluation needs (the weights' keys)."""
    if checkpoint.get("format", 1) >= FORMAT:
        return checkpoint
    renamed = {"0.": "features.", "1.": "classifier."}
    weights = {renamed.get(k[:2], k[:2]) + k[2:]: v for k, v in checkpoint["model"].items()}
    return {**checkpoint, "model": weights}
