"""Train one configured run: set-up, resume, the epoch loop, the final test. `alexnet.run` is its CLI.

Per epoch: train, evaluate on validation, log, checkpoint (last.pt, and best.pt by val/acc); mid-epoch
checkpoints every `trainer.checkpoint_every_n_steps`. At the end the best checkpoint is scored on the held-out
test split. A run resumes exactly from its last checkpoint (`trainer.resume`), and a signal makes it
checkpoint and stop cleanly. Everything is logged through `Tracker`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alexnet import distributed, performance
from alexnet.checkpoint import CheckpointWriter, check_writable, digest, load_checkpoint, load_latest
from alexnet.config import Config, ConfigError, to_dict
from alexnet.data import Loader, load_dataset
from alexnet.distributed import Dist
from alexnet.engine import EpochProgress, evaluate, skips_on_device, train_one_epoch
from alexnet.models import count_parameters, model_from_config
from alexnet.optim import build_optimizer, build_scheduler
from alexnet.resume import restore_rng_state, rng_state
from alexnet.signals import StopSignals
from alexnet.tracking import NullTracker, Tracker

log = logging.getLogger("alexnet")


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but CUDA is not available on this machine "
                          "(no GPU, or a CPU-only torch). Fix: use trainer.device=auto or trainer.device=cpu.")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def make_loaders(cfg: Config, data, device: torch.device, dist: Dist) -> tuple[Loader, Loader, Loader]:
    """Train and val are shared out between DDP ranks; the test split is scored whole, on rank 0."""
    d, limit = cfg.data, cfg.trainer.limit_batches
    common = dict(input_size=cfg.model.input_size, mean=d.mean, std=d.std, device=device, max_batches=limit,
                  channels_last=cfg.trainer.channels_last, dtype=performance.batch_dtype(cfg.trainer, device),
                  channels=cfg.model.input_channels)
    ranks = dict(rank=dist.rank, world_size=dist.world_size)
    train = Loader(data.train, d.batch_size, train=True, random_crop=d.random_crop, crop_padding=d.crop_padding,
                   hflip=d.hflip, seed=cfg.seed, **common, **ranks)
    val = Loader(data.val, d.eval_batch_size, **common, **ranks)
    test = Loader(data.test, d.eval_batch_size, **common)
    return train, val, test


def run_name_and_group(cfg: Config) -> tuple[str, str | None]:
    """Name: what differs from the defaults, e.g. `optimizer=adam,model.dropout=0.5`.

    Group: `wandb.group` if set, else the study: the sweep dir of a multirun (prefixed by the experiment's
    name for `+experiment=NAME`), or the experiment's name for a single run of one.
    """
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.", "wandb.", "trainer.resume="))]
    experiment = hydra_cfg.runtime.choices.get("experiment")
    name = ",".join(overrides) or "defaults"
    group = cfg.wandb.group
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = f"{experiment}:{hydra_cfg.sweep.dir}" if experiment else hydra_cfg.sweep.dir
    return name, group or experiment


def checkpoint_bytes(model, optimizer_name: str) -> int:
    """Room for last, previous and the one being written (weights + optimizer state), and best."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state_copies = {"sgd": 1, "adam": 2, "adamw": 2}.get(optimizer_name, 2)
    return 3 * weights * (1 + state_copies) + weights + 2**20


def restore_scaler(scaler: torch.amp.GradScaler, state: dict, saved_precision: str | None, precision: str) -> None:
    """The fp16 gradient scaler's state. A run may resume in another precision (`auto` means bf16 on one GPU and
    fp16 on an older one): a scaler that was off then starts fresh now, and finds its scale within a few steps."""
    if saved_precision not in (None, precision):
        log.warning("resuming a %s run in %s%s", saved_precision, precision,
                    ": the fp16 gradient scaler starts fresh" if scaler.is_enabled() else "")
    if scaler.is_enabled() and state:  # a disabled scaler saved {}: nothing to restore
        scaler.load_state_dict(state)


def find_checkpoint(resume: str, last: Path) -> tuple[dict, Path] | None:
    if resume == "never":
        return None
    if resume == "auto":
        return load_latest(last)
    return load_checkpoint(Path(resume)), Path(resume)


def train(cfg: Config, dict_cfg: DictConfig) -> float:
    """Train the run `cfg` (typed, from `to_typed(dict_cfg)`); `dict_cfg` is what gets logged."""
    dist, device = distributed.setup(cfg.trainer.strategy.value, resolve_device(cfg.trainer.device.value))
    cfg.trainer = performance.resolve(cfg.trainer, device)  # auto switches -> what they mean on this device
    try:
        return train_on(cfg, dict_cfg, dist, device)
    finally:
        distributed.teardown(dist)


def train_on(cfg: Config, dict_cfg: DictConfig, dist: Dist, device: torch.device) -> float:
    run_dir = Path(dist.broadcast(HydraConfig.get().runtime.output_dir))  # rank 0's: one run dir
    precision = cfg.trainer.precision.value
    log.info("config:\n%s", OmegaConf.to_yaml(dict_cfg, resolve=True))
    log.info("run dir: %s | device: %s%s", run_dir, device,
             f" | rank {dist.rank} of {dist.world_size} ({dist.backend})" if dist.active else "")
    log.info("fast path: %s", performance.describe(cfg.trainer))

    seed_everything(cfg.seed, cfg.trainer.deterministic)
    performance.configure_backends(cfg.trainer, device)
    data = load_dataset(cfg.data)
    train_loader, val_loader, test_loader = make_loaders(cfg, data, device, dist)
    model = model_from_config(cfg.model, num_classes=len(data.classes)).to(device)  # the network itself
    performance.set_memory_format(model, cfg.trainer)  # before the optimizer allocates state like it
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.data.batch_size, device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, len(train_loader), cfg.trainer.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if dist.active and cfg.trainer.on_nonfinite.value == "skip" and not skips_on_device(cfg.trainer, optimizer,
                                                                                        scaler):
        raise ConfigError("trainer.on_nonfinite=skip under DDP needs a fused optimizer and no fp16 scaler: "
                          "otherwise each rank decides on its own loss, and a rank that skips leaves the others "
                          "waiting in the gradient all-reduce. Fix: optimizer.impl=auto (fused) with "
                          "trainer.precision=bf16 or fp32, or trainer.on_nonfinite=stop.")
    num_params = count_parameters(model)
    log.info("%s: %s parameters | data: %d train, %d val, %d test images, %d classes | lr %.4g at batch %d",
             cfg.model.arch, f"{num_params:,}", len(data.train), len(data.val), len(data.test), len(data.classes),
             optimizer.param_groups[0]["initial_lr"], cfg.data.batch_size)

    ckpt_dir = run_dir / "checkpoints"
    if cfg.trainer.save_checkpoints and dist.is_main:
        check_writable(ckpt_dir, checkpoint_bytes(model, cfg.optimizer.name))
    epoch, step, best_val_acc, progress, generator_state, resumed = 0, 0, -1.0, EpochProgress(), None, {}
    trained_seconds = 0.0  # training time of the finished epochs, evaluation excluded: for time-to-accuracy
    found = find_checkpoint(cfg.trainer.resume, ckpt_dir / "last.pt")
    if found:
        resumed, path = found
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        restore_scaler(scaler, resumed["scaler"], resumed.get("precision"), precision)
        epoch, step, best_val_acc = resumed["epoch"], resumed["step"], resumed["best_val_acc"]
        trained_seconds = resumed.get("trained_seconds", 0.0)
        progress = EpochProgress.from_state(resumed["progress"], dist)
        generator_state = restore_rng_state(resumed["rng"], device)
        if epoch >= cfg.trainer.epochs:
            log.info("resuming from %s: all %d epochs are done, only the final test runs again", path, epoch)
        else:
            log.info("resuming from %s: epoch %d, batch %d, step %d", path, epoch + 1, progress.batch, step)

    name, group = run_name_and_group(cfg)
    config = to_dict(dict_cfg)
    config["trainer"] = to_dict(cfg.trainer)  # as it ran: precision and channels_last without `auto`
    run_info = {"name": name, "group": group, "project": cfg.wandb.project, "entity": cfg.wandb.entity,
                "overrides": list(HydraConfig.get().overrides.task)}
    tracker = Tracker(run_dir, config, cfg.wandb.mode.value, cfg.wandb.project, cfg.wandb.entity, group,
                      cfg.wandb.tags, name, init_timeout=cfg.wandb.init_timeout,
                      resume_id=resumed.get("run", {}).get("wandb_run_id"),
                      keep_lines=resumed.get("metrics_lines")) if dist.is_main else NullTracker()
    run_info["wandb_run_id"] = tracker.run_id
    if cfg.wandb.watch:
        tracker.watch(model, cfg.wandb.watch_log_freq)
    # DDP averages gradients over ranks; its broadcast at wrap time makes every rank start from rank 0's weights.
    ddp_model = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if dist.active else model
    step_model = performance.maybe_compile(ddp_model, cfg.trainer)  # shares its parameters with `model`
    eval_model = step_model if not dist.active else performance.maybe_compile(model, cfg.trainer)

    checkpoints = CheckpointWriter()  # writes in the background while training goes on

    def save_last(step: int, progress: EpochProgress) -> None:
        """Everything needed to continue as if nothing happened (rank 0 writes it; a collective with DDP)."""
        progress_state = progress.state_dict(dist)
        if not dist.is_main:
            return
        checkpoints.save(ckpt_dir / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "progress": progress_state,
            "best_val_acc": best_val_acc, "trained_seconds": trained_seconds,
            # the data generator's position matters mid-epoch only: a new epoch seeds its own
            "rng": rng_state(train_loader.generator_state() if progress.batch else None, device),
            "precision": precision,
            "metrics_lines": tracker.lines, "config": config, "classes": data.classes, "run": run_info})

    best_state, exit_code, signals = None, 1, StopSignals()
    try:
        with signals:
            while epoch < cfg.trainer.epochs and not signals.requested():
                epoch_start = time.perf_counter()
                train_stats, step = train_one_epoch(
                    step_model, train_loader, optimizer, scheduler, scaler, device, cfg.trainer, epoch, step,
                    progress, tracker.log, generator_state, save_last if cfg.trainer.save_checkpoints else None,
                    signals.requested, dist)
                generator_state = None
                if train_stats is None:  # stopped by a signal, after a mid-epoch checkpoint
                    break
                val = evaluate(eval_model, val_loader, device, precision, dist, cfg.trainer.tta_hflip)
                improved = val["acc"] > best_val_acc
                best_val_acc = max(best_val_acc, val["acc"])
                epoch, progress = epoch + 1, EpochProgress()
                trained_seconds += train_stats["train/time"]
                tracker.log({**train_stats, "val/loss": val["loss"], "val/acc": val["acc"],
                             "val/best_acc": best_val_acc, "epoch": epoch, "train/elapsed": trained_seconds,
                             "epoch_time": time.perf_counter() - epoch_start}, step)
                log.info("epoch %d/%d | train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s | %.1fs",
                         epoch, cfg.trainer.epochs, train_stats["train/loss_epoch"], train_stats["train/acc"],
                         val["loss"], val["acc"], train_stats["train/images_per_sec"],
                         time.perf_counter() - epoch_start)
                if cfg.trainer.save_checkpoints:
                    save_last(step, progress)
                    if improved and dist.is_main:
                        checkpoints.save(ckpt_dir / "best.pt", {
                            "model": model.state_dict(), "epoch": epoch, "step": step, "val_acc": val["acc"],
                            "config": config, "classes": data.classes, "run": run_info}, keep_previous=False)
                elif improved:  # no files: keep the best weights in memory for the final test
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        checkpoints.wait()  # every checkpoint on disk (or its error raised) before anything reads or reports one
        if signals.requested():
            exit_code = signals.exit_code
            log.warning("stopped at epoch %d, step %d by a signal; %s", epoch + 1, step,
                        f"the checkpoint is {ckpt_dir / 'last.pt'}: run the same command again to resume"
                        if cfg.trainer.save_checkpoints else "checkpoints are off (trainer.save_checkpoints=false)")
            signals.stop()

        if dist.active:  # a cheap check that DDP kept every rank's weights identical
            digests = dist.gather(digest(model.state_dict()))
            if len(set(digests)) != 1:
                raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
            log.info("all %d ranks hold identical weights (sha256 %s)", dist.world_size, digests[0][:16])
        if not dist.is_main:  # rank 0 scores the test split and logs for all
            exit_code = 0
            return best_val_acc
        if cfg.trainer.save_checkpoints:
            best_state = load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"]
        model.load_state_dict(best_state or model.state_dict())
        test = evaluate(eval_model, test_loader, device, precision, hflip=cfg.trainer.tta_hflip)
        log.info("test (best checkpoint, val acc %.4f): loss %.4f acc %.4f", best_val_acc, test["loss"], test["acc"])
        tracker.log_test_results(test, data.classes, data.test.images, step, cfg.wandb.sample_predictions)
        # val/acc's summary is W&B's running max (define_metric): writing it here would clobber it.
        summary = {"test/acc": test["acc"], "test/loss": test["loss"], "val/best_acc": best_val_acc,
                   "train/elapsed": trained_seconds,
                   "params": num_params, "epochs": cfg.trainer.epochs, "steps": step}
        tracker.summary(summary)
        log_model = cfg.wandb.log_model if cfg.wandb.log_model is not None else tracker.mode == "online"
        if log_model and cfg.trainer.save_checkpoints:
            tracker.log_model(ckpt_dir / "best.pt", {**summary, "config": config})
        exit_code = 0
    finally:
        if exit_code != 0:  # an error is on its way out: let the last write finish, without masking that error
            with contextlib.suppress(Exception):
                checkpoints.wait()
        tracker.finish(exit_code)
    return best_val_acc
