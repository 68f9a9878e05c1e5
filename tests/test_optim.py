"""Learning-rate schedules: warmup, step and cosine, stepped per optimizer step."""
from __future__ import annotations

import math

import pytest
import torch

from alexnet.config import compose, to_typed
from alexnet.optim import build_optimizer, build_scheduler


def lrs(*overrides, steps_per_epoch=10, epochs=4):
    cfg = to_typed(compose(["optimizer=sgd", "optimizer.lr=0.1", *overrides]))
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_constant():
    assert lrs("scheduler=none") == pytest.approx([0.1] * 40)


def test_warmup_is_linear_then_the_schedule():
    out = lrs("scheduler=none", "scheduler.warmup_epochs=1")
    assert out[:10] == pytest.approx([0.1 * (i + 1) / 10 for i in range(10)])
    assert out[10:] == pytest.approx([0.1] * 30)


def test_step():
    out = lrs("scheduler=step", "scheduler.step_epochs=2", "scheduler.gamma=0.5")
    assert out[:20] == pytest.approx([0.1] * 20) and out[20:] == pytest.approx([0.05] * 20)


def test_cosine_ends_at_min_lr():
    out = lrs("scheduler=cosine", "scheduler.min_lr_ratio=0.1")
    assert out[0] == pytest.approx(0.1)
    assert out[20] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert out[-1] == pytest.approx(0.01, abs=2e-4) and all(a >= b for a, b in zip(out, out[1:]))


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW)])
def test_optimizers_take_their_settings(name, cls):
    cfg = to_typed(compose([f"optimizer={name}", "optimizer.lr=0.02", "optimizer.weight_decay=0.001"]))
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, cls)
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["weight_decay"] == 0.001
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.9
