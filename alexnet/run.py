"""`python -m alexnet.run [overrides]`: train one AlexNet variant (or, with -m, one per sweep point).

Per epoch: train, evaluate on validation, log, checkpoint (last.pt, and best.pt by val/acc). At the end the
best checkpoint is scored on the held-out test split. Everything is logged through `Tracker`.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.config import Config, ConfigError, exit_on_user_error, to_dict, to_typed
from alexnet.data import Loader, load_dataset
from alexnet.engine import evaluate, train_one_epoch
from alexnet.models import count_parameters, model_from_config
from alexnet.optim import build_optimizer, build_scheduler
from alexnet.tracking import Tracker

log = logging.getLogger("alexnet")


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but CUDA is not available on this machine "
                          "(no GPU, or a CPU-only torch). Fix: use trainer.device=auto or trainer.device=cpu.")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def make_loaders(cfg: Config, data, device: torch.device) -> tuple[Loader, Loader, Loader]:
    d, limit = cfg.data, cfg.trainer.limit_batches
    common = dict(input_size=cfg.model.input_size, mean=d.mean, std=d.std, device=device, max_batches=limit)
    train = Loader(data.train, d.batch_size, train=True, random_crop=d.random_crop, crop_padding=d.crop_padding,
                   hflip=d.hflip, seed=cfg.seed, **common)
    val = Loader(data.val, d.eval_batch_size, **common)
    test = Loader(data.test, d.eval_batch_size, **common)
    return train, val, test


def run_name_and_group(cfg: Config) -> tuple[str, str | None]:
    """Name: what differs from the defaults, e.g. `optimizer=adam,model.dropout=0.5`.

    Group: `wandb.group` if set, else the study: the sweep dir of a multirun (prefixed by the experiment's
    name when run from experiments/), or the experiment's name for a single run of one.
    """
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.", "wandb."))]
    experiment = hydra_cfg.job.config_name if hydra_cfg.job.config_name != "config" else None
    name = ",".join(overrides) or experiment or "defaults"
    group = cfg.wandb.group
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = f"{experiment}:{hydra_cfg.sweep.dir}" if experiment else hydra_cfg.sweep.dir
    return name, group or experiment


def train(dict_cfg: DictConfig) -> float:
    cfg = to_typed(dict_cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.trainer.device.value)
    precision = cfg.trainer.precision.value
    log.info("config:\n%s", OmegaConf.to_yaml(dict_cfg, resolve=True))
    log.info("run dir: %s | device: %s | precision: %s", run_dir, device, precision)

    seed_everything(cfg.seed)
    data = load_dataset(cfg.data)
    train_loader, val_loader, test_loader = make_loaders(cfg, data, device)
    model = model_from_config(cfg.model, num_classes=len(data.classes)).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, len(train_loader), cfg.trainer.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    num_params = count_parameters(model)
    log.info("%s: %s parameters | data: %d train, %d val, %d test images, %d classes", cfg.model.arch,
             f"{num_params:,}", len(data.train), len(data.val), len(data.test), len(data.classes))

    name, group = run_name_and_group(cfg)
    config = to_dict(dict_cfg)
    tracker = Tracker(run_dir, config, cfg.wandb.mode.value, cfg.wandb.project, cfg.wandb.entity, group,
                      cfg.wandb.tags, name, init_timeout=cfg.wandb.init_timeout)
    if cfg.wandb.watch:
        tracker.watch(model, cfg.wandb.watch_log_freq)
    run_info = {"name": name, "group": group, "wandb_run_id": tracker.run_id, "project": cfg.wandb.project,
                "entity": cfg.wandb.entity, "overrides": list(HydraConfig.get().overrides.task)}
    ckpt_dir = run_dir / "checkpoints"
    best_val_acc, best_state, step, exit_code = -1.0, None, 0, 1
    try:
        for epoch in range(cfg.trainer.epochs):
            epoch_start = time.perf_counter()
            train_stats, step = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, device, precision,
                                                epoch, step, cfg.trainer.log_every_n_steps, tracker.log)
            val = evaluate(model, val_loader, device, precision)
            improved = val["acc"] > best_val_acc
            best_val_acc = max(best_val_acc, val["acc"])
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                     "val_acc": val["acc"], "config": config, "classes": data.classes, "run": run_info}
            if cfg.trainer.save_checkpoints:
                save_checkpoint(ckpt_dir / "last.pt", state)
                if improved:
                    save_checkpoint(ckpt_dir / "best.pt", state)
            elif improved:  # no files: keep the best weights in memory for the final test
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epoch_time = time.perf_counter() - epoch_start
            tracker.log({**train_stats, "val/loss": val["loss"], "val/acc": val["acc"], "val/best_acc": best_val_acc,
                         "epoch": epoch + 1, "epoch_time": epoch_time}, step)
            log.info("epoch %d/%d | train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s | %.1fs",
                     epoch + 1, cfg.trainer.epochs, train_stats["train/loss_epoch"], train_stats["train/acc"],
                     val["loss"], val["acc"], train_stats["train/images_per_sec"], epoch_time)

        if cfg.trainer.save_checkpoints:
            best_state = load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"]
        model.load_state_dict(best_state)
        test = evaluate(model, test_loader, device, precision)
        log.info("test (best checkpoint, val acc %.4f): loss %.4f acc %.4f", best_val_acc, test["loss"], test["acc"])
        tracker.log_test_results(test, data.classes, data.test.images, step, cfg.wandb.sample_predictions)
        # val/acc's summary is W&B's running max (define_metric): writing it here would clobber it.
        summary = {"test/acc": test["acc"], "test/loss": test["loss"], "val/best_acc": best_val_acc,
                   "params": num_params, "epochs": cfg.trainer.epochs, "steps": step}
        tracker.summary(summary)
        log_model = cfg.wandb.log_model if cfg.wandb.log_model is not None else tracker.mode == "online"
        if log_model and cfg.trainer.save_checkpoints:
            tracker.log_model(ckpt_dir / "best.pt", {**summary, "config": config})
        exit_code = 0
    finally:
        tracker.finish(exit_code)
    return best_val_acc


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> float:
    with exit_on_user_error():
        return train(dict_cfg)


if __name__ == "__main__":
    main()
