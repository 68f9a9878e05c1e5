"""The training step under each precision, evaluation, limit_batches, non-finite losses and clipping."""
from __future__ import annotations

import math
import sys
import time

import pytest
import torch

from alexnet.config import compose, to_typed
from alexnet.data import Loader, synthetic_images
from alexnet.distributed import Dist
from alexnet.engine import EpochProgress, NonFiniteLoss, evaluate, train_one_epoch
from alexnet.models import build_model

CPU = torch.device("cpu")


def trainer(*overrides):
    return to_typed(compose([f"trainer.{o}" for o in overrides])).trainer


def setup(max_batches=None, lr=2e-3, precision="fp32"):
    torch.manual_seed(0)
    split = synthetic_images(256, 0.3, torch.Generator().manual_seed(0))
    loader = Loader(split, 32, 32, [0.5] * 3, [0.25] * 3, CPU, train=True, random_crop=True, hflip=True,
                    max_batches=max_batches)
    model = build_model("alexnet_cifar", width=0.125, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    return loader, model, optimizer, scheduler, scaler


def epoch(loader, model, optimizer, scheduler, scaler, cfg, log=lambda m, s: None, step=0, index=0, **kw):
    return train_one_epoch(model, loader, optimizer, scheduler, scaler, CPU, cfg, index, step, EpochProgress(), log,
                           **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains(precision):
    parts = setup(precision=precision)
    logged = []
    before = [p.detach().clone() for p in parts[1].parameters()]
    stats, step = epoch(*parts, trainer("log_every_n_steps=3", f"precision={precision}"),
                        log=lambda m, s: logged.append((s, m)))
    assert step == len(parts[0]) == 8
    assert [s for s, _ in logged] == [3, 6, 8]  # every 3 steps, and the epoch's last
    assert all(math.isfinite(m["train/loss"]) and m["train/lr"] == 2e-3 for _, m in logged)
    assert 0 <= stats["train/acc"] <= 1 and stats["train/images_per_sec"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, parts[1].parameters()))
    result = evaluate(parts[1], Loader(parts[0].split, 64, 32, [0.5] * 3, [0.25] * 3, CPU), CPU, precision)
    assert math.isfinite(result["loss"]) and len(result["predictions"]) == 256


def test_limit_batches_caps_an_epoch():
    _, step = epoch(*setup(max_batches=2), trainer(), step=10)
    assert step == 12


def test_a_few_epochs_learn_the_synthetic_set():
    parts = setup()
    step = 0
    for i in range(6):
        _, step = epoch(*parts, trainer(), step=step, index=i)
    result = evaluate(parts[1], Loader(parts[0].split, 64, 32, [0.5] * 3, [0.25] * 3, CPU), CPU, "fp32")
    assert result["acc"] > 0.5  # chance is 0.1


def test_a_blown_up_loss_stops_with_step_loss_and_lr():
    with pytest.raises(NonFiniteLoss) as e:
        epoch(*setup(lr=1e9), trainer("log_every_n_steps=100"))
    message = str(e.value)
    assert "non-finite training loss (nan)" in message or "non-finite training loss (inf)" in message
    assert "at step " in message and "learning rate 1e+09" in message and "trainer.on_nonfinite=skip" in message


@pytest.mark.parametrize("fused", [False, True])
def test_skip_counts_the_non_finite_batches(fused):
    parts = list(setup())
    if fused:  # skipped on the device, without a host sync (the default impl=auto is fused)
        parts[2] = torch.optim.Adam(parts[1].parameters(), lr=2e-3, fused=True)
        parts[3] = torch.optim.lr_scheduler.LambdaLR(parts[2], lambda step: 1.0)
    real_forward = parts[1].forward
    calls = {"n": 0}

    def forward(x):  # every third batch produces NaN logits
        calls["n"] += 1
        out = real_forward(x)
        return out * float("nan") if calls["n"] % 3 == 0 else out

    parts[1].forward = forward
    logged = []
    stats, step = epoch(*parts, trainer("on_nonfinite=skip", "log_every_n_steps=1"),
                        log=lambda m, s: logged.append((s, m)))
    assert stats["train/skipped_batches"] == 2 and step == 8  # batches 3 and 6 of 8
    assert all(torch.isfinite(p).all() for p in parts[1].parameters())
    assert math.isfinite(stats["train/loss_epoch"]) and 0 <= stats["train/acc"] <= 1
    # a log window of skipped steps only has no loss to show (it used to say 0.0)
    assert [s for s, m in logged if "train/loss" not in m] == [3, 6]
    assert all(math.isfinite(m["train/loss"]) and m["train/loss"] > 0 for _, m in logged if "train/loss" in m)


def test_grad_clipping_bounds_the_update():
    parts = setup(lr=1.0)
    before = [p.detach().clone() for p in parts[1].parameters()]
    optimizer = torch.optim.SGD(parts[1].parameters(), lr=1.0)
    epoch(parts[0], parts[1], optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), parts[4],
          trainer("grad_clip_norm=0.001"))
    change = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(before, parts[1].parameters())))
    assert change <= 8 * 0.001 * 1.0001  # 8 steps, each of norm <= lr * clip


@pytest.fixture
def gloo(tmp_path):
    """A real one-rank gloo process group: DDP's code path on the CPU, collectives and all."""
    import torch.distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield Dist(0, 1, 0, "gloo")
    torch.distributed.destroy_process_group()


def syncs_per_epoch(batches: int, log_every: int, monkeypatch, dist: Dist, *overrides: str) -> tuple[int, int]:
    """(.item() and .tolist() calls made by our code, collectives) in one epoch of `batches` steps."""
    import torch.distributed
    loader, model, _, _, scaler = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, fused=True)  # impl=auto's; Adam's default syncs per step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = Loader(synthetic_images(32 * batches, 0.3, torch.Generator().manual_seed(0)), 32, 32, [0.5] * 3,
                    [0.25] * 3, CPU, train=True, random_crop=True, hflip=True)
    cfg = trainer(f"log_every_n_steps={log_every}", "checkpoint_every_n_steps=null", *overrides)
    reads, collectives = [], []  # each read waits for the device; torch's own CPU-side calls aside

    def counted(method):
        def call(self):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("alexnet"):
                reads.append(method.__name__)
            return method(self)
        return call

    all_reduce = torch.distributed.all_reduce
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "item", counted(torch.Tensor.item))
        patch.setattr(torch.Tensor, "tolist", counted(torch.Tensor.tolist))
        patch.setattr(torch.distributed, "all_reduce", lambda *a, **k: collectives.append(1) or all_reduce(*a, **k))
        epoch(loader, model, optimizer, scheduler, scaler, cfg, dist=dist)
    return len(reads), len(collectives)


@pytest.mark.parametrize("ddp,skip", [(False, False), (True, False), (False, True), (True, True)])
def test_host_syncs_and_collectives_do_not_grow_with_the_steps_between_logs(monkeypatch, request, ddp, skip):
    # Each .item() (and each collective, with DDP) stalls a GPU; only log steps and the epoch's end may have them,
    # also with on_nonfinite=skip (decided on the device with the fused optimizer).
    dist = request.getfixturevalue("gloo") if ddp else Dist()
    overrides = ["on_nonfinite=skip"] if skip else []
    short = syncs_per_epoch(4, 4, monkeypatch, dist, *overrides)
    long = syncs_per_epoch(24, 24, monkeypatch, dist, *overrides)
    assert long == short, (short, long)
    twice = syncs_per_epoch(24, 12, monkeypatch, dist, *overrides)
    per_log = (twice[0] - long[0], twice[1] - long[1])
    # a log step reads the last one's values (copied long ago); with DDP it also sums this one's window and finds
    # its earliest non-finite step (two all-reduces, no wait) and polls for a stop signal (one, and a read)
    bound = (2, 3) if ddp else (1, 0)
    assert per_log[0] <= bound[0] and per_log[1] <= bound[1], per_log


def test_checkpoint_time_is_not_training_time():
    parts = setup()
    stats, _ = epoch(*parts, trainer("checkpoint_every_n_steps=2"), checkpoint=lambda step, progress: time.sleep(0.5))
    assert stats["train/time"] < 1.5, stats  # 3 mid-epoch checkpoints of 0.5 s, none of them counted
