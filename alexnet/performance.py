"""The fast path: the trainer's speed switches, made concrete for a device and applied to torch and the model.

Each switch is a trainer option (conf/trainer/default.yaml) with the default that measured fastest: channels_last
everywhere; bf16 autocast, cuDNN autotuning and TF32 on CUDA; fp32 on the CPU (see `resolve_precision`).
`python -m alexnet.bench` measures what each one gives, and tests/test_performance.py checks that no combination
changes what the model computes beyond the precision's rounding.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import sys

import torch
from torch import nn

from alexnet.config import Precision, TrainerConfig
from alexnet.errors import ConfigError


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a GPU with bf16 support (fp16 on older ones), fp32 on the CPU.

    The CPU keeps fp32 by default: autocast there is only fast on processors with bf16 matrix units, and
    fp32 keeps CPU runs exact and comparable across machines. `trainer.precision=bf16` is there to try.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve(trainer: TrainerConfig, device: torch.device) -> TrainerConfig:
    """The trainer config with `precision: auto` replaced by what it means on `device`."""
    if compiled(trainer) and device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        raise ConfigError("trainer.compile=true on the CPU needs a C++ compiler for torch.compile's generated "
                          "code, and none was found (g++, or $CXX). Fix: install one (e.g. `apt-get install "
                          "g++`) or drop trainer.compile=true.")
    return dataclasses.replace(trainer, precision=Precision(resolve_precision(trainer.precision.value, device)))


def configure_backends(trainer: TrainerConfig, device: torch.device) -> None:
    """Process-wide switches: cuDNN autotuning (off when deterministic kernels are asked for), TF32, and on the
    CPU an allocator that keeps freed memory for the next step."""
    if device.type == "cpu":
        reuse_freed_memory()
    torch.backends.cudnn.benchmark = trainer.cudnn_benchmark and not trainer.deterministic
    set_tf32(trainer.tf32)


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convs: fp32's range with a 10-bit mantissa, several times the fp32 rate on tensor
    cores. Through the legacy API, which every torch we support reads: once the newer `fp32_precision` setters
    are used, the legacy getters that Inductor calls raise "mix of the legacy and new APIs" (torch 2.9 to 2.14)."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def backend_flags() -> dict:
    """The process-wide flags that `configure_backends` sets, to save and restore them."""
    return {"benchmark": torch.backends.cudnn.benchmark, "matmul": torch.get_float32_matmul_precision(),
            "conv": torch.backends.cudnn.allow_tf32}


def restore_backend_flags(flags: dict) -> None:
    torch.backends.cudnn.benchmark = flags["benchmark"]
    torch.set_float32_matmul_precision(flags["matmul"])
    torch.backends.cudnn.allow_tf32 = flags["conv"]


def reuse_freed_memory() -> bool:
    """Make glibc keep large freed blocks in the heap instead of returning them to the OS.

    By default glibc maps every block over 32 MB (a 224x224 batch, a conv's activations) afresh and unmaps it
    when freed, so each step page-faults its memory back in: about 20 ms per 77 MB batch on this project's CPU.
    Measured with alexnet.bench at 224: the data pipeline 1.4x and the training step 1.1x faster with this
    (what jemalloc or tcmalloc would also give). Skipped where another allocator is preloaded or off glibc.
    """
    if sys.platform != "linux" or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, say): leave the allocator alone
        return False


def describe(trainer: TrainerConfig, device: torch.device) -> str:
    """One line for the run's log: the switches that mean something on this device (cuDNN and TF32 are CUDA's)."""
    line = f"precision {trainer.precision.value} | channels_last {trainer.channels_last} | compile {trainer.compile}"
    if device.type != "cuda":
        return line
    return f"{line} | cudnn_benchmark {trainer.cudnn_benchmark} | tf32 {trainer.tf32}"


def batch_dtype(trainer: TrainerConfig, device: torch.device) -> torch.dtype:
    """The dtype batches are made in: on a GPU autocast's (so a 224 batch is written once, as the first conv reads
    it), fp32 on the CPU."""
    if device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.precision.value, torch.float32)


def set_memory_format(model: nn.Module, trainer: TrainerConfig) -> nn.Module:
    """channels_last weights (in place, before the optimizer sees them) when the trainer asks for it."""
    return model.to(memory_format=torch.channels_last) if trainer.channels_last else model


def compiled(trainer: TrainerConfig) -> bool:
    return trainer.compile != "false"


def maybe_compile(model: nn.Module, trainer: TrainerConfig) -> nn.Module:
    """torch.compile'd in `trainer.compile`'s mode when asked: the first steps (and the first of each new batch
    shape or train/eval mode) pay for compilation, tens of seconds for AlexNet (more for max-autotune, which
    times kernel choices); parameters stay shared with `model`."""
    if not compiled(trainer):
        return model
    return torch.compile(model, mode=None if trainer.compile == "default" else trainer.compile)
