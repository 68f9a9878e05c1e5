"""Optimizers and learning-rate schedules from the `optimizer` and `scheduler` config nodes."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup, then the schedule."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "step":
        return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    if cfg.name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """Stepped once per optimizer step, so warmup and decay are smooth within an epoch."""
    total = steps_per_epoch * epochs
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total))
