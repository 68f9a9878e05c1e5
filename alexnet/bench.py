"""`python -m alexnet.bench [options] [overrides]`: our data pipeline and training step against the seed's way.

Measured side by side in one process, on the config `python -m alexnet.run` would compose from the same
overrides (`--model`, `--input-size`, `--batch-size`, `--device`, `--precision` are shorthands for them):
- data: batches ready on the device. `ours` is alexnet.data.Loader (the uint8 set held on the device, crop,
  flip, normalize and resize done per batch with tensor ops); `seed` is a torchvision DataLoader doing it one
  image at a time with PIL (RandomCrop, RandomHorizontalFlip, Resize, ToTensor, Normalize), one worker per core.
- train: whole training steps (SGD by default, as `optimizer=` says). `seed`: that DataLoader, an fp32 eager
  NCHW step with torch's default backend flags and a `loss.item()` per step, as classic training loops do.
  `bare`: a bare PyTorch loop over our batches with the fast path. `ours`: alexnet.engine.train_one_epoch with
  the fast path. `VARIANT+key=value` changes a switch (`ours+compile=true`, `ours+precision=fp32`); a key
  without a dot is a trainer option, `impl` the optimizer's.
- FLOPs per image of a training step (torch's FlopCounterMode, forward and backward), the achieved TFLOP/s
  and its share of the peak of a large matmul measured in this run, and peak memory (CUDA).
Each measurement warms up first, then times `--repeats` segments of `--steps` steps (CUDA events on a GPU)
and reports the median. Images are random uint8 at CIFAR-10's 32x32: no step's cost depends on pixel values.
"""
from __future__ import annotations

from alexnet.errors import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting(__name__)  # before the heavy imports below

import argparse
import dataclasses
import gc
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from alexnet import performance
from alexnet.config import Config, OptimizerImpl, Precision, compose, to_typed
from alexnet.errors import UserError, contract
from alexnet.data import Loader, Split, training_augmentation
from alexnet.ema import WeightEMA
from alexnet.engine import DTYPES, EpochProgress, autocast, train_one_epoch
from alexnet.models import model_from_config
from alexnet.optim import build_optimizer, build_scheduler, resolve_impl
from alexnet.training import resolve_device

DATA_VARIANTS = ("seed", "ours")
BASES = ("seed", "bare", "ours")
SHORTHANDS = {"model": "model", "input_size": "model.input_size", "batch_size": "data.batch_size",
              "device": "trainer.device", "precision": "trainer.precision"}


# ------------------------------------------------------------------------------------------------ timing

class Clock:
    """Marks on the device's timeline: CUDA events on a GPU (no host sync per mark), else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in itertools.pairwise(self.marks)]
        return [b - a for a, b in itertools.pairwise(self.marks)]


def measure(segments: Iterator[int], device: torch.device, warmup: int, repeats: int) -> dict:
    """Images/s over `repeats` timed segments, after `warmup` untimed ones; `segments` runs one segment per
    next() and returns the images it processed. Segments follow each other without a pause."""
    for _ in range(warmup):
        next(segments)
    if device.type == "cuda":
        torch.cuda.synchronize()
    clock, images = Clock(device), []
    clock.mark()
    for _ in range(repeats):
        images.append(next(segments))
        clock.mark()
    rates = [n / max(s, 1e-12) for n, s in zip(images, clock.intervals())]
    return {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": rates}


def in_segments(batches: Iterator, steps: int, step: Callable) -> Iterator[int]:
    """Segments of `steps` calls of `step` on consecutive batches of an endless iterator."""
    while True:
        images = 0
        for batch in itertools.islice(batches, steps):
            step(*batch)
            images += len(batch[1])
        yield images


def forever(epoch_batches: Callable[[int], Iterator]) -> Iterator:
    """Batches of epoch 0, 1, 2, ... without end."""
    for epoch in itertools.count():
        yield from epoch_batches(epoch)


# -------------------------------------------------------------------------------------------------- data

class SeedStyleDataset(torch.utils.data.Dataset):
    """Like torchvision's CIFAR10 dataset: HWC uint8 arrays in memory, one PIL image at a time."""

    def __init__(self, split: Split, transform):
        self.images, self.labels, self.transform = split.images.permute(0, 2, 3, 1).numpy(), split.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def seed_style_loader(split: Split, cfg: Config, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    from torchvision import transforms as T

    size, d = cfg.model.input_size, cfg.data
    steps = [T.RandomCrop(split.images.shape[-1], padding=d.crop_padding), T.RandomHorizontalFlip()]
    if size != split.images.shape[-1]:
        steps.append(T.Resize(size))
    steps += [T.ToTensor(), T.Normalize(d.mean, d.std)]
    return torch.utils.data.DataLoader(
        SeedStyleDataset(split, T.Compose(steps)), batch_size=d.batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=True)


def seed_style_batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator:
    for images, labels in forever(lambda _: iter(loader)):
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def our_loader(split: Split, cfg: Config, device: torch.device, seed: int = 0) -> Loader:
    d = cfg.data
    return Loader(split, d.batch_size, cfg.model.input_size, d.mean, d.std, device, train=True,
                  **training_augmentation(d), seed=seed,
                  channels_last=cfg.trainer.channels_last, dtype=performance.batch_dtype(cfg.trainer, device),
                  channels=cfg.model.input_channels)


# ----------------------------------------------------------------------------------------- training steps

@dataclasses.dataclass
class Variant:
    name: str
    base: str  # seed | bare | ours
    cfg: Config  # trainer resolved for the device


def parse_variants(names: list[str], overrides: list[str], device: torch.device) -> list[Variant]:
    variants = []
    for name in names:
        base, *switches = name.split("+")
        if base not in BASES:
            raise UserError(f"unknown variant {name!r}: it must start with one of {', '.join(BASES)}. "
                            f"Fix: e.g. --variants seed,bare,ours,ours+compile=true")
        if base == "seed" and switches:
            raise UserError(f"variant {name!r}: the seed-style loop is fixed (fp32, eager, NCHW). Fix: put "
                            f"switches on bare or ours, e.g. ours+precision=fp32.")
        extra = []
        for switch in switches:
            key, sep, value = switch.partition("=")
            if not sep:
                raise UserError(f"variant {name!r}: {switch!r} is not key=value. Fix: e.g. ours+compile=true")
            extra.append(f"{key if '.' in key else ('optimizer.' if key == 'impl' else 'trainer.') + key}={value}")
        cfg = to_typed(compose(overrides + extra))
        if base == "seed":  # the seed's step: fp32, NCHW, eager, torch's default optimizer implementation
            cfg.trainer = dataclasses.replace(cfg.trainer, precision=Precision.fp32, channels_last=False,
                                              compile="false")
            cfg.optimizer = dataclasses.replace(cfg.optimizer, impl=OptimizerImpl.default)
            cfg.model = dataclasses.replace(cfg.model, input_channels=3)  # RGB, as the seed
        cfg.trainer = performance.resolve(cfg.trainer, device)
        variants.append(Variant(name, base, cfg))
    return variants


def use_backend_flags(variant: Variant, torch_defaults: dict, device: torch.device) -> None:
    """The seed runs with torch's default flags; bare and ours with their trainer's."""
    if variant.base == "seed":
        performance.restore_backend_flags(torch_defaults)
    else:
        performance.configure_backends(variant.cfg.trainer, device)


def train_segments(variant: Variant, split: Split, device: torch.device, steps: int, workers: int) -> Iterator[int]:
    """Training segments of `steps` steps for one variant, on a fresh model (seed 0)."""
    cfg, trainer = variant.cfg, variant.cfg.trainer
    torch.manual_seed(0)
    model = model_from_config(cfg.model, num_classes=10).to(device)
    performance.set_memory_format(model, trainer)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.data.batch_size, device)
    step_model = performance.maybe_compile(model, trainer)
    model.train()

    if variant.base == "seed":
        running_loss = 0.0

        def seed_step(images, labels):
            nonlocal running_loss
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # the classic loop's running loss: a host sync every step

        return in_segments(seed_style_batches(seed_style_loader(split, cfg, workers, device), device), steps,
                           seed_step)

    loader = our_loader(split, cfg, device)
    precision = trainer.precision.value
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if variant.base == "bare":
        def bare_step(images, labels):
            with autocast(device, precision):
                loss = F.cross_entropy(step_model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        # one "epoch" of `steps` batches per segment, as `ours` below
        return (next(in_segments(loader.batches(epoch), steps, bare_step)) for epoch in itertools.count())

    loader.max_batches = steps
    scheduler = build_scheduler(cfg.scheduler, optimizer, len(loader), 1_000_000)
    ema = WeightEMA(model, trainer.ema_decay) if trainer.ema_decay else None  # `ours+ema_decay=0.999`

    def ours() -> Iterator[int]:
        step = 0
        for epoch in itertools.count():
            _, step = train_one_epoch(step_model, loader, optimizer, scheduler, scaler, device, trainer, epoch,
                                      step, EpochProgress(), lambda metrics, step: None, ema=ema)
            yield len(loader) * loader.batch_size

    return ours()


def train_flops_per_image(cfg: Config) -> float:
    """FLOPs of one training step (forward, loss, backward) per image, counted by torch on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model_from_config(cfg.model, num_classes=10).to("meta")
    size = cfg.model.input_size
    images = torch.empty(2, cfg.model.input_channels, size, size, device="meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 2


def matmul_peak_tflops(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """The best rate of a large square matmul: the device's practical peak for this dtype."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    clock = Clock(device)
    clock.mark()
    for _ in range(max(3, repeats)):
        a @ b
        clock.mark()
    return 2 * n**3 / min(clock.intervals()) / 1e12


def checkpoint_seconds(cfg: Config, device: torch.device) -> dict:
    """What a run's last.pt costs (model and optimizer state after a step): the copy to host memory, which the
    training thread waits for, and the hashing, writing and fsync, which a background thread does meanwhile."""
    import tempfile

    from alexnet.checkpoint import save_checkpoint, to_host

    model = performance.set_memory_format(model_from_config(cfg.model, num_classes=10).to(device), cfg.trainer)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.data.batch_size, device)
    size = cfg.model.input_size
    images = torch.randn(2, cfg.model.input_channels, size, size, device=device)
    F.cross_entropy(model(images), torch.arange(2, device=device)).backward()
    optimizer.step()  # the optimizer's state exists from the first step on
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    start = time.perf_counter()
    host_state = to_host(state)
    copied = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.pt"
        save_checkpoint(path, host_state, keep_previous=False)
        written = time.perf_counter()
        size_bytes = path.stat().st_size
    return {"bytes": size_bytes, "to_host_s": copied - start, "write_s": written - copied}


# ------------------------------------------------------------------------------------------------ profile

PHASES = ("data", "forward", "backward", "optimizer")  # record_function ranges of alexnet.data and .engine


def profile_variant(variant: Variant, split: Split, device: torch.device, steps: int) -> dict:
    """One segment of `steps` training steps under torch.profiler, after an untimed one: the share of time in
    each phase of the step (device time of the kernels each phase launched on a GPU, CPU time on a CPU), and
    the top kernels (CUDA) or operators (CPU) by their own time."""
    from torch.profiler import ProfilerActivity, profile

    segments = train_segments(variant, split, device, steps, workers=0)
    next(segments)  # warm-up: allocations, cuDNN autotuning
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        next(segments)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    segments.close()
    events = prof.key_averages()
    basis = "device" if device.type == "cuda" else "cpu"

    def total(event, kind: str) -> float:  # microseconds; torch renamed cuda_* to device_* in 2.4
        names = (f"{kind}_time_total", f"{kind.replace('device', 'cuda')}_time_total")
        return next((getattr(event, n) for n in names if hasattr(event, n)), 0.0)

    phase_us = {phase: 0.0 for phase in PHASES}
    for event in events:
        if event.key in phase_us:
            phase_us[event.key] += total(event, basis)
    phased = sum(phase_us.values())
    table = events.table(sort_by=f"self_{basis}_time_total", row_limit=15, max_name_column_width=70)
    return {"variant": variant.name, "steps": steps, "basis": basis, "wall_ms_per_step": 1000 * wall / steps,
            "phase_ms_per_step": {p: us / 1000 / steps for p, us in phase_us.items()},
            "phase_share": {p: (us / phased if phased else 0.0) for p, us in phase_us.items()},
            "top_ops": table}


def print_profile(profile: dict) -> None:
    shares = ", ".join(f"{p} {100 * s:.1f}% ({profile['phase_ms_per_step'][p]:.2f} ms)"
                       for p, s in profile["phase_share"].items())
    print(f"profile of {profile['variant']} ({profile['steps']} steps, {profile['wall_ms_per_step']:.2f} ms per "
          f"step wall-clock), {profile['basis']} time per phase: {shares}")
    print(profile["top_ops"])


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m alexnet.bench", description=__doc__.split("\n\n")[0],
                                     epilog="Any other argument is a config override, as for alexnet.run "
                                            "(e.g. model.lrn=true optimizer=adam).")
    parser.add_argument("--model", help="model option: alexnet or alexnet_cifar (default: the config's)")
    parser.add_argument("--input-size", type=int, help="model.input_size")
    parser.add_argument("--batch-size", type=int, help="data.batch_size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="trainer.device")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="trainer.precision")
    parser.add_argument("--variants", default=None,
                        help="training variants, comma-separated (default: seed,bare,ours and, on CUDA, "
                             "ours+compile=true); 'none' measures the data pipeline only")
    parser.add_argument("--data-variants", default="seed,ours", help="data pipelines: seed,ours or 'none'")
    parser.add_argument("--steps", type=int, help="steps (batches) per timed segment (default: 20 on CUDA, 1 on "
                                                  "a CPU)")
    parser.add_argument("--warmup", type=int, help="untimed segments first (default: 2 on CUDA, 1 on a CPU)")
    parser.add_argument("--repeats", type=int, help="timed segments; the median is reported (default: 5 on CUDA, "
                                                    "3 on a CPU)")
    parser.add_argument("--data-steps", type=int, default=None,
                        help="batches per data segment (default: --steps on CUDA, 10 on a CPU)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="seed-style DataLoader workers (default: one per core)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile --steps steps of the `ours` variant (torch.profiler): the share of time "
                             "in data, forward, backward and optimizer, and the top kernels")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args, overrides = parser.parse_known_args(argv)
    for a in overrides:
        if a.startswith("-"):
            parser.error(f"unknown option {a}")
    for flag in ("steps", "warmup", "repeats", "workers", "data_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < (0 if flag in ("warmup", "workers") else 1):
            parser.error(f"--{flag.replace('_', '-')} must be at least {0 if flag in ('warmup', 'workers') else 1}")
    args.overrides = [f"{SHORTHANDS[k]}={v}" for k, v in vars(args).items() if k in SHORTHANDS and v is not None]
    args.overrides += overrides
    return args


# What a measurement runs when not told: on a GPU, enough steps for stable medians; on a CPU, where one step of
# alexnet at 224 (batch 128) takes about 5 s, about a minute for the default config.
SEGMENTS = {"cuda": {"steps": 20, "warmup": 2, "repeats": 5, "data_steps": None},
            "cpu": {"steps": 1, "warmup": 1, "repeats": 3, "data_steps": 10}}


def size_to_device(args: argparse.Namespace, device: torch.device) -> None:
    """Fill in the segment sizes the command line left out with the device's defaults."""
    for flag, value in SEGMENTS[device.type].items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)


def progress(done: int, total: int, what: str) -> None:
    """A line before each measurement, so that a slow device still shows the bench moving."""
    print(f"[{done + 1}/{total}] {what} ...", file=sys.stderr, flush=True)


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def run(args: argparse.Namespace) -> dict:
    torch_defaults = performance.backend_flags()
    base = to_typed(compose(args.overrides))
    device = resolve_device(base.trainer.device.value)
    size_to_device(args, device)
    # Process-wide, before anything runs, so that the seed-style loop (and its workers) get it too.
    reused = performance.reuse_freed_memory() if device.type == "cpu" else None
    names = args.variants.split(",") if args.variants else (
        ["seed", "bare", "ours"] + (["ours+compile=true"] if device.type == "cuda" else []))
    names = [] if names == ["none"] else names
    data_names = [] if args.data_variants == "none" else args.data_variants.split(",")
    for name in data_names:
        if name not in DATA_VARIANTS:
            raise UserError(f"unknown data variant {name!r}. Fix: --data-variants seed,ours (or none)")
    variants = parse_variants(names, args.overrides, device)
    ours_cfg = dataclasses.replace(base, trainer=performance.resolve(base.trainer, device))
    batch = base.data.batch_size
    data_steps = args.data_steps or args.steps
    n = max(50_000, batch * (max(args.steps, data_steps) + 1))
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (n,), generator=generator))
    result = {"machine": {**machine(device), "cpu_allocator_keeps_freed_memory": reused}, "model": dataclasses.asdict(base.model), "batch_size": batch,
              "input_size": base.model.input_size, "steps": args.steps, "data_steps": data_steps,
              "warmup": args.warmup,
              "repeats": args.repeats, "workers": args.workers, "overrides": args.overrides,
              "flops_per_image": train_flops_per_image(base), "data": {}, "train": {}}

    total = len(data_names) + len(variants) + 1 + bool(args.profile)  # the checkpoint timing is one more
    segments_said = f"{args.warmup} warm-up + {args.repeats} timed segments of"
    for i, name in enumerate(data_names):
        progress(i, total, f"data {name}: {segments_said} {plural(data_steps, 'batch', 'batches')}")
        if name == "seed":
            batches = seed_style_batches(seed_style_loader(split, base, args.workers, device), device)
        else:
            loader = our_loader(split, ours_cfg, device)
            batches = forever(loader.batches)
        segments = in_segments(batches, data_steps, lambda images, labels: None)
        figures = measure(segments, device, args.warmup, args.repeats)
        segments.close()  # stops the DataLoader's workers
        del segments, batches
        gc.collect()
        result["data"][name] = figures
        print(f"data {name}: {figures['images_per_s']:,.0f} images/s", file=sys.stderr)

    precisions = {v.cfg.trainer.precision.value for v in variants}
    use_backend_flags(Variant("ours", "ours", ours_cfg), torch_defaults, device)  # fp32: TF32 if the trainer has it
    result["peak_tflops"] = {p: matmul_peak_tflops(DTYPES[p] or torch.float32, device, args.repeats)
                             for p in precisions}
    for i, variant in enumerate(variants, start=len(data_names)):
        progress(i, total, f"train {variant.name}: {segments_said} {plural(args.steps, 'step', 'steps')}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        use_backend_flags(variant, torch_defaults, device)
        segments = train_segments(variant, split, device, args.steps, args.workers)
        figures = measure(segments, device, args.warmup, args.repeats)
        segments.close()
        del segments
        gc.collect()
        trainer = variant.cfg.trainer
        precision = trainer.precision.value
        achieved = figures["images_per_s"] * result["flops_per_image"] / 1e12
        figures.update(
            precision=precision, channels_last=trainer.channels_last, compile=trainer.compile,
            optimizer_impl=resolve_impl(variant.cfg.optimizer.impl.value, device), tflops=achieved,
            fraction_of_peak=achieved / result["peak_tflops"][precision],
            peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)
        result["train"][variant.name] = figures
        print(f"train {variant.name}: {figures['images_per_s']:,.0f} images/s", file=sys.stderr)
    progress(total - 1 - bool(args.profile), total, "checkpoint write")
    result["checkpoint"] = checkpoint_seconds(ours_cfg, device)
    if args.profile:
        progress(total - 1, total, f"profile of ours: {plural(args.steps, 'step', 'steps')}")
        ours = next((v for v in variants if v.name == "ours"), None) or parse_variants(["ours"], args.overrides,
                                                                                     device)[0]
        use_backend_flags(ours, torch_defaults, device)
        result["profile"] = profile_variant(ours, split, device, args.steps)
    result["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict) -> dict:
    """Speed-ups against the seed-style pipeline and loop, and our loop against the bare one."""
    out, data, train = {}, result["data"], result["train"]
    if "seed" in data and "ours" in data:
        out["data ours / seed"] = data["ours"]["images_per_s"] / data["seed"]["images_per_s"]
    for name, figures in train.items():
        if name != "seed" and "seed" in train:
            out[f"train {name} / seed"] = figures["images_per_s"] / train["seed"]["images_per_s"]
    if "ours" in train and "bare" in train:
        out["train ours / bare"] = train["ours"]["images_per_s"] / train["bare"]["images_per_s"]
    return out


def machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                               platform.machine())
    return {"device": str(device), "name": name, "cpus": len(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    console = Console(width=150)
    console.print(f"{result['model']['arch']} at {result['input_size']}x{result['input_size']}, batch "
                  f"{result['batch_size']} | {m['device']} ({m['name']}, {m['cpus']} cores) | torch {m['torch']} | "
                  f"{result['flops_per_image'] / 1e9:.3f} GFLOP per image per training step | median of "
                  f"{result['repeats']} x {result['steps']} steps after {result['warmup']} warm-up segments")
    if result["data"]:
        table = Table(title="data pipeline (batches ready on the device)")
        for column in ("pipeline", "images/s", "min - max", "vs seed"):
            table.add_column(column, justify="left" if column == "pipeline" else "right")
        seed = result["data"].get("seed", {}).get("images_per_s")
        for name, f in result["data"].items():
            table.add_row(name, f"{f['images_per_s']:,.0f}", f"{f['min']:,.0f} - {f['max']:,.0f}",
                          f"{f['images_per_s'] / seed:.2f}x" if seed else "")
        console.print(table)
    if result["train"]:
        peaks = ", ".join(f"{p} {t:.2f}" for p, t in sorted(result["peak_tflops"].items()))
        table = Table(title=f"training step (matmul peak TFLOP/s: {peaks})")
        for column in ("variant", "switches", "images/s", "min - max", "TFLOP/s", "% of peak", "peak mem",
                       "vs seed", "vs bare"):
            table.add_column(column, justify="left" if column in ("variant", "switches") else "right")
        seed = result["train"].get("seed", {}).get("images_per_s")
        bare = result["train"].get("bare", {}).get("images_per_s")
        for name, f in result["train"].items():
            switches = (f"{f['precision']} {'nhwc' if f['channels_last'] else 'nchw'} "
                        f"{'' if f['compile'] == 'false' else 'compiled (' + f['compile'] + ') '}{f['optimizer_impl']}")
            memory = f"{f['peak_memory_gb']:.2f} GiB" if f["peak_memory_gb"] is not None else "-"
            table.add_row(name, switches, f"{f['images_per_s']:,.0f}", f"{f['min']:,.0f} - {f['max']:,.0f}",
                          f"{f['tflops']:.3f}", f"{100 * f['fraction_of_peak']:.1f}%", memory,
                          f"{f['images_per_s'] / seed:.2f}x" if seed else "",
                          f"{f['images_per_s'] / bare:.3f}x" if bare and name != "seed" else "")
        console.print(table)
    c = result["checkpoint"]
    console.print(f"checkpoint (model + optimizer state, {c['bytes'] / 2**20:,.0f} MiB): {c['to_host_s']:.3f} s to "
                  f"copy to host memory (training waits), {c['write_s']:.3f} s to hash, write and fsync (in the "
                  f"background)")
    console.print(f"process peak RSS {result['max_rss_gb']:.2f} GiB")
    if "profile" in result:
        print_profile(result["profile"])


def writable(path: Path) -> bool:
    """Whether `path` can be written (its folder made), checked before minutes of benchmarking."""
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    return not path.is_dir() and folder.is_dir() and os.access(folder if not path.exists() else path, os.W_OK)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with contract():
        if args.json and not writable(args.json):
            raise UserError(f"cannot write --json {args.json}. Fix: pass a file path in a folder you can write to.")
        result = run(args)
        print_tables(result)
        if args.json:
            try:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result, indent=1))
            except OSError as e:  # the table above still holds the figures
                raise UserError(f"cannot write --json {args.json}: {e.strerror or e}. Fix: pass a writable "
                                f"path (the figures are in the table above).") from e
            print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
