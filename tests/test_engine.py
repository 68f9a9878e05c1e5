"""The training step under each precision, evaluation, and limit_batches."""
from __future__ import annotations

import math

import pytest
import torch

from alexnet.data import Loader, synthetic_images
from alexnet.engine import evaluate, train_one_epoch
from alexnet.models import build_model


def setup(precision: str, max_batches=None):
    torch.manual_seed(0)
    split = synthetic_images(256, 0.3, torch.Generator().manual_seed(0))
    loader = Loader(split, 32, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), train=True, random_crop=True,
                    hflip=True, max_batches=max_batches)
    model = build_model("alexnet_cifar", width=0.125, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    return loader, model, optimizer, scheduler, scaler


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains(precision):
    loader, model, optimizer, scheduler, scaler = setup(precision)
    logged = []
    before = [p.detach().clone() for p in model.parameters()]
    stats, step = train_one_epoch(model, loader, optimizer, scheduler, scaler, torch.device("cpu"), precision,
                                  epoch=0, step=0, log_every=3, log=lambda m, s: logged.append((s, m)))
    assert step == len(loader) == 8
    assert [s for s, _ in logged] == [3, 6, 8]  # every 3 steps, and the epoch's last
    assert all(math.isfinite(m["train/loss"]) and m["train/lr"] == 2e-3 for _, m in logged)
    assert 0 <= stats["train/acc"] <= 1 and stats["train/images_per_sec"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    result = evaluate(model, Loader(loader.split, 64, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu")),
                      torch.device("cpu"), precision)
    assert math.isfinite(result["loss"]) and len(result["predictions"]) == 256


def test_limit_batches_caps_an_epoch():
    loader, model, optimizer, scheduler, scaler = setup("fp32", max_batches=2)
    _, step = train_one_epoch(model, loader, optimizer, scheduler, scaler, torch.device("cpu"), "fp32",
                              epoch=0, step=10, log_every=100, log=lambda m, s: None)
    assert step == 12


def test_a_few_epochs_learn_the_synthetic_set():
    loader, model, optimizer, scheduler, scaler = setup("fp32")
    step = 0
    for epoch in range(6):
        _, step = train_one_epoch(model, loader, optimizer, scheduler, scaler, torch.device("cpu"), "fp32",
                                  epoch, step, 100, lambda m, s: None)
    result = evaluate(model, Loader(loader.split, 64, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu")),
                      torch.device("cpu"), "fp32")
    assert result["acc"] > 0.5  # chance is 0.1
