"""The training step, one epoch of training, and evaluation. Plain functions, as in torchvision's references."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from tqdm import tqdm

from alexnet.errors import UserError
from alexnet.data import Loader
from alexnet.distributed import Dist
from alexnet.ema import WeightEMA
from alexnet.performance import resolve_precision

log_line = logging.getLogger("alexnet").info
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = DTYPES[resolve_precision(precision, device)]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


class NonFiniteLoss(UserError):
    """A NaN or infinite training loss with trainer.on_nonfinite=stop."""


# what to change when training diverges: every non-finite stop says it
DIVERGENCE_FIX = "Fix: lower optimizer.lr, add warmup (scheduler.warmup_epochs) or trainer.grad_clip_norm"


@dataclass
class EpochProgress:
    """What the current epoch has done so far: checkpointed mid-epoch, so a resumed epoch ends the same.
    The sums live on the device, so that a step never waits for the host to add to them."""

    batch: int = 0  # batches done
    seen: int = 0  # images trained on, skipped batches included (throughput)
    # Losses are plain cross-entropy, comparable with val/loss; with label smoothing the smoothed objective that
    # training minimises is summed as well.
    loss_sum: torch.Tensor | None = None  # sum of per-image losses of the steps that counted (not skipped)
    objective_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    counted: torch.Tensor | None = None  # images of the steps that counted
    window_loss: torch.Tensor | None = None  # sum of step losses since the last log line
    window_objective: torch.Tensor | None = None
    window_count: torch.Tensor | None = None  # steps that counted since the last log line
    skipped: torch.Tensor | None = None  # batches skipped (trainer.on_nonfinite=skip): the same on every rank
    elapsed: float = 0.0  # seconds of training

    TENSORS = {"loss_sum": torch.float32, "objective_sum": torch.float32, "correct": torch.int64,
               "counted": torch.int64, "window_loss": torch.float32, "window_objective": torch.float32,
               "window_count": torch.int64, "skipped": torch.int64}
    SUMS = ("loss_sum", "objective_sum", "correct", "counted", "window_loss", "window_objective",
            "window_count")  # per rank: summed over ranks

    def on(self, device: torch.device) -> "EpochProgress":
        for name, dtype in self.TENSORS.items():
            value = getattr(self, name)
            value = torch.zeros((), dtype=dtype, device=device) if value is None else torch.as_tensor(value)
            setattr(self, name, value.to(device, dtype))
        return self

    def state_dict(self, dist: Dist = Dist()) -> dict:
        """The epoch so far, with sums over all ranks (a collective call with DDP)."""
        state = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        if self.loss_sum is not None:  # a fresh epoch has nothing to sum yet (on every rank alike)
            for name in self.SUMS:
                state[name] = dist.sum(getattr(self, name)).cpu()
            state["seen"] = int(dist.sum(torch.tensor(self.seen, device=self.loss_sum.device)).item())
        return state

    @classmethod
    def from_state(cls, state: dict, dist: Dist = Dist()) -> "EpochProgress":
        """Rank 0 holds the saved sums and the other ranks start from zero, so sums over ranks stay right
        whatever the number of ranks that saved them."""
        state = dict(state)
        if "counted" not in state:  # saved before 2026-11-26: `seen` counted only the steps that counted
            state["counted"] = None if state.get("loss_sum") is None else torch.tensor(state["seen"])
            state["window_count"] = torch.tensor(state.pop("window_steps", 0))
        progress = cls(**state)
        if not dist.is_main:
            for name in cls.SUMS:
                setattr(progress, name, None)
            progress.seen = 0
        return progress


def skips_on_device(trainer, optimizer, scaler) -> bool:
    """`on_nonfinite=skip` without a host sync: the fused optimizers skip their update on the device when told
    that a gradient is not finite (as GradScaler tells them); fp16's scaler and unfused updates cannot."""
    return (trainer.on_nonfinite.value == "skip" and not scaler.is_enabled()
            and bool(optimizer.defaults.get("fused")))


def nonfinite_gradients(optimizer) -> torch.Tensor:
    """1.0 if any gradient holds a NaN or an infinity, else 0.0 (0-dim): on the device, no host sync, after DDP's
    all-reduce the same on every rank (so every rank skips the same steps)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    device = grads[0].device
    found = torch.zeros((), device=device)  # 0-dim: the fused updates subtract it from their step counts
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones((), device=device))  # GradScaler's
    return found


class DeferredRead:
    """Device values on their way to the host without a wait: copied (into pinned memory, on a GPU) at one log
    step and read at the next, or before a checkpoint, or at the epoch's end, when the copy has long finished."""

    def __init__(self):
        self.pending: tuple[torch.Tensor, torch.cuda.Event | None, dict] | None = None

    def put(self, values: torch.Tensor, **info) -> None:
        event = None
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True).copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = values.clone()  # on the CPU the values are there already; the clone keeps them as they are
        self.pending = (host, event, info)

    def take(self) -> tuple[list, dict] | None:
        if self.pending is None:
            return None
        (host, event, info), self.pending = self.pending, None
        if event is not None:
            event.synchronize()
        return host.tolist(), info


def train_one_epoch(model, loader: Loader, optimizer, scheduler, scaler, device: torch.device, trainer, epoch: int,
                    step: int, progress: EpochProgress, log: Callable[[dict, int], None],
                    generator_state: torch.Tensor | None = None,
                    checkpoint: Callable[[int, EpochProgress], None] | None = None,
                    should_stop: Callable[[], bool] = lambda: False, dist: Dist = Dist(),
                    ema: WeightEMA | None = None) -> tuple[dict | None, int]:
    """Train on `loader` from `progress.batch` on; returns (the epoch's stats, or None if stopped early, step).

    `trainer` is the trainer config node. Loss and accuracy are summed on the device. At each log step
    (`log_every_n_steps`) they are copied to the host without a wait and read at the next one, where a
    non-finite loss is caught too; before each checkpoint and at the epoch's end they are read at once. So
    the GPU runs ahead of the host between those points (with on_nonfinite=skip too, unless fp16 or an
    unfused optimizer makes it look at every loss).
    """
    model.train()
    progress.on(device)
    precision, skip_nonfinite = trainer.precision.value, trainer.on_nonfinite.value == "skip"
    smoothing = trainer.label_smoothing > 0
    on_device = skips_on_device(trainer, optimizer, scaler)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # step of the first non-finite loss
    bad_loss = torch.zeros((), device=device)
    lrs: dict[int, float] = {}  # lr of each step since the last check, for the message

    def nonfinite(step: int, value: float) -> NonFiniteLoss:
        return NonFiniteLoss(
            f"non-finite training loss ({value}) at step {step} (epoch {epoch + 1}), learning rate "
            f"{lrs.get(step, float('nan')):.4g}. The run stops here. {DIVERGENCE_FIX}, or use "
            f"trainer.on_nonfinite=skip to skip such batches.")

    def check_finite() -> None:
        """Now, with a host sync: before a checkpoint and at the epoch's end."""
        seen_bad = first_bad >= 0
        if dist.any(bool(seen_bad.item()), device):
            never = torch.iinfo(torch.int64).max
            bad = int(-dist.max(-torch.where(seen_bad, first_bad, never)).item())  # the earliest on any rank
            raise nonfinite(bad, bad_loss.item())

    reads = DeferredRead()

    def publish() -> None:
        """Check and log the values the last log step sent to the host."""
        taken = reads.take()
        if taken is None:
            return
        (window_sum, window_objective, window_count, bad, bad_value), info = taken
        if math.isfinite(bad):
            raise nonfinite(int(bad), bad_value)
        # a window whose steps were all skipped has no loss to show (not 0.0)
        window_mean = window_sum / window_count if window_count else None
        losses = {} if window_mean is None else {"train/loss": window_mean, **(
            {"train/objective": window_objective / window_count} if smoothing else {})}
        log({**losses, "train/lr": info["lr"], "epoch": epoch + 1}, info["step"])
        if info["show"] and window_mean is not None:
            log_line("epoch %d [%d/%d] loss %.4f lr %.3g", epoch + 1, info["step"] - first_step + start_batch,
                     len(loader), window_mean, info["lr"])
        if on_terminal and window_mean is not None:
            bar.set_postfix_str(f"loss {window_mean:.4f}, {training_left()} of training left", refresh=False)

    def training_left() -> str:
        """The run's training time still to go, at this epoch's pace so far (evaluation not counted): its
        training seconds (checkpoint writes left out, a resumed part included) over its batches."""
        per_step = (progress.elapsed + time.perf_counter() - start) / max(progress.batch, 1)
        steps_left = (trainer.epochs - epoch - 1) * len(loader) + len(loader) - progress.batch
        return tqdm.format_interval(per_step * steps_left)

    # A progress bar on a terminal (rank 0's only); otherwise (a cluster log, a pipe) a plain line about every
    # tenth of the epoch.
    on_terminal = sys.stderr.isatty() and dist.is_main
    bar = tqdm(total=len(loader), initial=progress.batch, desc=f"epoch {epoch + 1}/{trainer.epochs}", leave=False,
               disable=not on_terminal, unit="batch")
    next_line = (progress.batch // max(1, len(loader) // 10) + 1) * len(loader) / 10
    start = time.perf_counter()
    first_step, start_batch = step, progress.batch  # for the plain progress lines
    always = torch.ones((), dtype=torch.bool, device=device)  # a step counts, unless skipped on the device
    for images, labels in loader.batches(epoch, progress.batch, generator_state):
        lr = scheduler.get_last_lr()[0]  # the lr this step uses
        lrs[step + 1] = lr
        # record_function names the phases of a step in profiles (alexnet.bench --profile); free otherwise
        with record_function("forward"), autocast(device, precision):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=trainer.label_smoothing)
        finite = torch.isfinite(loss.detach())
        if skip_nonfinite and not on_device and not finite.item():  # fp16 or an unfused update: a host sync
            progress.skipped += 1
        else:
            with record_function("backward"):
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if trainer.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip_norm)
            with record_function("optimizer"):
                counts = always
                if on_device:
                    optimizer.found_inf = nonfinite_gradients(optimizer)  # read by the fused update
                    counts = optimizer.found_inf == 0
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                if on_device:
                    del optimizer.found_inf
            if not skip_nonfinite:
                first_bad = torch.where(~finite & (first_bad < 0), step + 1, first_bad)
                bad_loss = torch.where(first_bad == step + 1, loss.detach().float(), bad_loss)
            objective = loss.detach().float()
            plain = F.cross_entropy(logits.detach().float(), labels) if smoothing else objective
            step_loss, step_objective = torch.where(counts, plain, 0.0), torch.where(counts, objective, 0.0)
            progress.loss_sum += step_loss * len(labels)
            progress.objective_sum += step_objective * len(labels)
            progress.window_objective += step_objective
            progress.correct += torch.where(counts, (logits.argmax(1) == labels).sum(), 0)
            progress.counted += counts * len(labels)
            progress.window_loss += step_loss
            progress.window_count += counts
            progress.skipped += ~counts
            progress.seen += len(labels)
        with record_function("optimizer"):
            scheduler.step()
        step += 1
        progress.batch += 1
        bar.update()
        last = progress.batch == len(loader)
        if step % trainer.log_every_n_steps == 0 or last:
            # This log step's values go to the host without a wait; the last log step's, copied long ago, are
            # checked and logged now. The epoch's last step reads its own at once: the epoch end syncs anyway.
            publish()
            earliest_bad = -dist.max(-torch.where(first_bad >= 0, first_bad.double(), math.inf))  # over ranks
            window = dist.sum(torch.stack([progress.window_loss.double(), progress.window_objective.double(),
                                           progress.window_count.double()]))
            show = not on_terminal and progress.batch >= next_line and not last  # a plain progress line
            reads.put(torch.cat([window, earliest_bad.reshape(1), bad_loss.double().reshape(1)]), step=step, lr=lr,
                      show=show)
            if show:
                next_line += len(loader) / 10
            progress.window_loss.zero_()
            progress.window_objective.zero_()
            progress.window_count.zero_()
            if last:
                publish()
        # On the last batch the caller ends the epoch and checkpoints it. With DDP all ranks stop together: they
        # agree at log steps only, as agreeing is a collective and a host sync, which each step would pay for.
        poll = not dist.active or step % trainer.log_every_n_steps == 0
        stop = poll and dist.any(should_stop(), device) and not last
        save = checkpoint is not None and not last and (stop or (
            trainer.checkpoint_every_n_steps and step % trainer.checkpoint_every_n_steps == 0))
        if stop or save:
            publish()  # its line belongs before the checkpoint, which records how many lines there are
        if save:
            check_finite()  # never checkpoint a broken model
            progress.elapsed += time.perf_counter() - start
            checkpoint(step, progress)
            start = time.perf_counter()  # checkpoint time is not training time (images/s, train/elapsed)
        if stop:
            bar.close()
            return None, step
    check_finite()
    if device.type == "cuda":
        torch.cuda.synchronize()
    progress.elapsed += time.perf_counter() - start
    bar.close()
    seen = int(dist.sum(torch.tensor(progress.seen, device=device)).item())
    loss_sum, objective_sum, correct, counted = dist.sum(torch.stack([
        progress.loss_sum, progress.objective_sum, progress.correct.float(), progress.counted.float()])).tolist()
    # an epoch whose steps were all skipped has no loss or accuracy: absent, not 0
    stats = {"train/images_per_sec": seen / max(progress.elapsed, 1e-9), "train/time": progress.elapsed}
    if counted:
        stats.update({"train/loss_epoch": loss_sum / counted, "train/acc": correct / counted})
        if smoothing:
            stats["train/objective_epoch"] = objective_sum / counted
    if skip_nonfinite:
        stats["train/skipped_batches"] = int(progress.skipped.item())
    return stats, step


@torch.no_grad()
def evaluate(model, loader: Loader, device: torch.device, precision: str, dist: Dist = Dist(),
             hflip: bool = False, should_stop: Callable[[], bool] | None = None) -> dict | None:
    """Mean cross-entropy, accuracy, and each image's prediction and confidence (max softmax probability).

    `hflip`: score the mean logits of each image and its mirror image (test-time augmentation).
    With a sharded loader (DDP) loss and accuracy are over all ranks; predictions are this rank's.
    `should_stop` (one process only): checked before each batch; None is returned if it says stop.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    predictions, confidences, targets = [], [], []
    for images, labels in loader:
        if should_stop is not None and should_stop():
            return None
        with autocast(device, precision):
            logits = model(images).float()
            if hflip:
                logits = (logits + model(images.flip(3)).float()) / 2
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confidence, prediction = logits.softmax(1).max(1)
        predictions.append(prediction)
        confidences.append(confidence)
        targets.append(labels)
    predictions, targets = torch.cat(predictions), torch.cat(targets)
    totals = dist.sum(torch.stack([loss_sum, (predictions == targets).sum().float(),
                                   torch.tensor(float(len(targets)), device=device)]))
    return {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item(),
            "predictions": predictions.cpu(), "confidences": torch.cat(confidences).cpu(), "targets": targets.cpu()}


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Accuracy per true class; None for a class without images (it has no accuracy, not 0)."""
    totals = confusion.sum(1)
    return [None if n == 0 else c / n for c, n in zip(confusion.diag().tolist(), totals.tolist())]
