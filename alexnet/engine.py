"""The training step, one epoch of training, and evaluation. Plain functions, as in torchvision's references."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.data import Loader

log_line = logging.getLogger("alexnet").info
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def train_one_epoch(model, loader: Loader, optimizer, scheduler, scaler, device: torch.device, precision: str,
                    epoch: int, step: int, log_every: int, log: Callable[[dict, int], None]) -> tuple[dict, int]:
    """One pass over `loader`; returns the epoch's stats and the global step after it.

    Loss and accuracy are summed on the device and read back only every `log_every` steps, so the step never
    waits on the host otherwise.
    """
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, window_loss, window_steps = 0, torch.zeros((), device=device), 0
    # A progress bar on a terminal; otherwise (a cluster log, a pipe) a plain line about every tenth of the epoch.
    on_terminal = sys.stderr.isatty()
    progress = tqdm(total=len(loader), desc=f"epoch {epoch + 1}", leave=False, disable=not on_terminal)
    next_line = len(loader) / 10
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        with autocast(device, precision):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()[0]  # the lr this step used
        scheduler.step()

        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        window_loss += loss.detach()
        window_steps += 1
        step += 1
        if step % log_every == 0 or i == len(loader) - 1:
            window_mean = (window_loss / window_steps).item()
            log({"train/loss": window_mean, "train/lr": lr, "epoch": epoch + 1}, step)
            window_loss.zero_()
            window_steps = 0
            if not on_terminal and i + 1 >= next_line and i < len(loader) - 1:
                log_line("epoch %d [%d/%d] loss %.4f lr %.3g", epoch + 1, i + 1, len(loader), window_mean, lr)
                next_line += len(loader) / 10
        progress.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    progress.close()
    stats = {"train/loss_epoch": (loss_sum / seen).item(), "train/acc": correct.item() / seen,
             "train/images_per_sec": seen / elapsed, "train/time": elapsed}
    return stats, step


@torch.no_grad()
def evaluate(model, loader: Loader, device: torch.device, precision: str) -> dict:
    """Mean cross-entropy, accuracy, and each image's prediction and confidence (max softmax probability)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    predictions, confidences, targets = [], [], []
    for images, labels in loader:
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confidence, prediction = logits.softmax(1).max(1)
        predictions.append(prediction)
        confidences.append(confidence)
        targets.append(labels)
    predictions, targets = torch.cat(predictions), torch.cat(targets)
    return {"loss": loss_sum.item() / len(targets), "acc": (predictions == targets).float().mean().item(),
            "predictions": predictions.cpu(), "confidences": torch.cat(confidences).cpu(), "targets": targets.cpu()}


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    return (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
