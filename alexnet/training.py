"""Train one configured run: set up, resume (or start), fit, test, finish. `alexnet.run` is its command line,
`alexnet.train` its Python API; both hand over a `RunContext`, so nothing below reads Hydra's globals.

Per epoch: train, validate, log, checkpoint (last.pt, and best.pt by val/acc); mid-epoch checkpoints every
`trainer.checkpoint_every_n_steps`. At the end the best checkpoint is scored on the whole test split. A run
resumes exactly from its last checkpoint, only under the config it was trained with, and a signal makes it
checkpoint and stop cleanly. Checkpoints are only ever written from a finite state. Everything is logged
through `Tracker`, whose W&B run a `finally` finishes.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from alexnet import distributed, performance, rundir
from alexnet.logs import FILE_ONLY
from alexnet.checkpoint import CheckpointError, CheckpointWriter, check_writable, digest, load_checkpoint, load_latest
from alexnet.config import Config, to_dict
from alexnet.errors import INTERRUPTED, ConfigError, RunDirRefused, StopNow, UserError
from alexnet.data import Dataset, Loader, Split, load_dataset, training_augmentation
from alexnet.distributed import Dist
from alexnet.ema import WeightEMA
from alexnet.engine import DIVERGENCE_FIX, EpochProgress, NonFiniteLoss, evaluate, skips_on_device, train_one_epoch
from alexnet.archs import ARCHS, training_bytes
from alexnet.models import count_parameters, model_from_config
from alexnet.optim import STATE_COPIES, build_optimizer, build_scheduler
from alexnet.resume import check_compatible
from alexnet.signals import StopSignals
from alexnet.state import FORMAT, TrainState
from alexnet.tracking import NullTracker, Tracker

log = logging.getLogger("alexnet")


@dataclass
class RunContext:
    """What the command line knows about a run: read from Hydra once (alexnet.run) or given (alexnet.train)."""

    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    experiment: str | None = None  # +experiment=NAME
    sweep_dir: str | None = None  # the multirun's dir, for a job of a sweep
    hydra_yaml: str | None = None  # Hydra's config of the run, kept as .hydra/hydra.yaml
    notes: list[str] = field(default_factory=list)  # what choosing the run dir found
    command: str | None = None  # the command line that started it, for "to resume, run ..."
    recorded: bool = False  # set once the run's checks passed and its record is written
    began: bool = False  # set once W&B is up and the first step is next: before, a Ctrl-C leaves nothing of it

    def name(self) -> str:
        """What differs from the defaults, e.g. `optimizer=adam,model.dropout=0.5`."""
        kept = [o for o in self.overrides if not o.startswith(("hydra.", "wandb.", "trainer.resume="))]
        return ",".join(kept) or "defaults"

    def group(self, wandb_group: str | None) -> str | None:
        """`wandb.group` if set, else the study: the sweep dir (after the experiment's name), or the experiment."""
        if wandb_group:
            return wandb_group
        if self.sweep_dir:
            return f"{self.experiment}:{self.sweep_dir}" if self.experiment else self.sweep_dir
        return self.experiment


@dataclass
class Loaders:
    train: Loader
    val: Loader
    test: Loader
    test_split: Split  # the test images scored, on the CPU (for the W&B table of sample predictions)


class Checkpoints:
    """The run's checkpoint files, written in the background by rank 0: last.pt, the whole state (best weights
    included), and best.pt, an export of the best weights alone. Knows which is the last good one."""

    def __init__(self, folder: Path, enabled: bool, writes: bool):
        self.folder, self.enabled, self.writes = folder, enabled, enabled and writes
        self.writer = CheckpointWriter()
        self.last_good: str | None = None  # what the last written last.pt holds

    def save_last(self, payload: dict, what: str) -> None:
        if self.writes:
            self.writer.save(self.folder / "last.pt", payload)
            self.last_good = f"{self.folder / 'last.pt'} ({what})"

    def export_best(self, run: "Run") -> None:
        state = run.state
        if self.writes and state.best_weights is not None:
            self.writer.save(self.folder / "best.pt", {
                "format": FORMAT, "model": state.best_weights, "epoch": state.best_epoch,
                "val_acc": state.best_val_acc, "config": state.config, "classes": run.data.classes, "run": run.info},
                keep_previous=False)

    def describe_last_good(self) -> str:
        if not self.enabled:
            return "No checkpoint was written (trainer.save_checkpoints=false)."
        if self.last_good is None:
            return "This run wrote no checkpoint, so none holds a broken state."
        return f"The last good checkpoint is {self.last_good}."


@dataclass
class Run:
    """The parts of a run that stay fixed while it trains; what changes is in `state`."""

    cfg: Config
    ctx: RunContext
    dist: Dist
    device: torch.device
    data: Dataset
    loaders: Loaders
    state: TrainState
    train_model: torch.nn.Module  # state.model as trained: DDP-wrapped and/or compiled (the same parameters)
    eval_model: torch.nn.Module
    checkpoints: Checkpoints
    info: dict  # the run's identity, stored in each checkpoint: name, group, overrides, W&B run id
    tracker: Tracker | NullTracker = field(default_factory=NullTracker)


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
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # set both ways: in-process runs follow
        torch.use_deterministic_algorithms(deterministic)  # each other; the call costs 2 s (it loads Inductor)


def scored_test_split(split: Split, limit: int | None, seed: int) -> Split:
    """The whole test split, or `limit` images drawn at random with a fixed seed (the same for every run of a
    data set), so that no class is left out as the first images of a class-ordered folder would."""
    if limit is None or limit >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return Split(split.images[keep], split.labels[keep])


def make_loaders(cfg: Config, data: Dataset, device: torch.device, dist: Dist) -> Loaders:
    """Train and val are shared out between DDP ranks and cut by trainer.limit_batches; the test split is never
    cut by it, and is scored on rank 0."""
    d, limit = cfg.data, cfg.trainer.limit_batches
    common = dict(input_size=cfg.model.input_size, mean=d.mean, std=d.std, device=device,
                  channels_last=cfg.trainer.channels_last, dtype=performance.batch_dtype(cfg.trainer, device),
                  channels=cfg.model.input_channels)
    ranks = dict(rank=dist.rank, world_size=dist.world_size, max_batches=limit)
    test = scored_test_split(data.test, cfg.trainer.limit_test_images, d.split_seed)
    return Loaders(
        train=Loader(data.train, d.batch_size, train=True, **training_augmentation(d), seed=cfg.seed, **common,
                     **ranks),
        val=Loader(data.val, d.eval_batch_size, **common, **ranks),
        test=Loader(test, d.eval_batch_size, **common), test_split=test)


def checkpoint_bytes(model, optimizer_name: str, ema: bool) -> int:
    """Room for last, previous and the one being written (weights, best weights, optimizer state, the moving
    average), and best."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * weights * (2 + STATE_COPIES.get(optimizer_name, 2) + ema) + weights + 2**20


# ------------------------------------------------------------------------------------------------ the steps

def load_resume_path(path: Path) -> dict:
    """The checkpoint trainer.resume=PATH names, or the contract's error saying what is wrong with it."""
    if not path.is_file():
        raise ConfigError(f"trainer.resume={path} {'is a directory' if path.is_dir() else 'does not exist'}. Fix: "
                          f"trainer.resume=<run dir>/checkpoints/last.pt, or trainer.resume=auto.")
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise type(e)(f"cannot resume: {e}. Fix: trainer.resume=<run dir>/checkpoints/last.pt of a run "
                      f"(or its last.prev.pt), or trainer.resume=never to start afresh.") from e


def find_resume_point(cfg: Config, ctx: RunContext, config: dict) -> tuple[dict, Path] | None:
    """The checkpoint to continue from, checked against this config before anything is loaded or written.

    A run dir that already holds a run is only ever continued from its own checkpoint, under its own config: a
    fresh start or another run's checkpoint would mix two trainings in one record. One exception: a run of
    the same config that never got to its first checkpoint (a job requeued early) starts over.
    """
    own = ctx.run_dir / "checkpoints" / "last.pt"
    resume = cfg.trainer.resume
    found = None if resume == "never" else load_latest(own) if resume == "auto" else (
        load_resume_path(Path(resume)), Path(resume))
    continues_own = found is not None and Path(found[1]).resolve().parent == own.parent.resolve()
    if rundir.holds_a_run(ctx.run_dir) and not continues_own:
        if found is None and resume == "auto" and rundir.never_checkpointed_same(ctx.run_dir, config):
            log.warning("the run in %s stopped before its first checkpoint: it starts over", ctx.run_dir)
            (ctx.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return None
        raise RunDirRefused(f"the run dir {ctx.run_dir} already holds a run, and this one would "
                        f"{'start afresh' if found is None else f'continue {found[1]}'} over its record. Fix: give "
                        f"it a new dir (hydra.run.dir=PATH, or hydra.sweep.dir=PATH with -m)"
                        f"{'' if resume == 'auto' else ', or drop trainer.resume=... to continue the run that is there'}.")
    if found is None:
        return None
    saved, path = found
    if saved.get("format", 1) != FORMAT:
        raise UserError(f"cannot resume {path}: it is a format-{saved.get('format', 1)} checkpoint, and this version "
                        f"resumes format {FORMAT} (its weights still evaluate: alexnet.evaluate ckpt={path}). "
                        f"Fix: start afresh with trainer.resume=never in a new run dir.")
    if "optimizer" not in saved:
        raise UserError(f"cannot resume {path}: it holds weights only (a best.pt), not a training state. Fix: "
                        f"trainer.resume={path.parent / 'last.pt'}, or score it with alexnet.evaluate ckpt={path}.")
    check_compatible(path, saved["config"], config)
    started = saved["epoch"] + (saved["progress"].get("batch", 0) > 0)
    if cfg.trainer.epochs < started:
        raise RunDirRefused(f"cannot resume {path} with trainer.epochs={cfg.trainer.epochs}: it has trained "
                            f"{'into ' if started > saved['epoch'] else ''}epoch {started}, and its record would "
                            f"claim fewer epochs than the weights had. Fix: trainer.epochs>={started}.")
    return saved, path


def resume(run: Run, saved: dict, path: Path) -> torch.Tensor | None:
    """Continue `saved` on the data it trained on; best.pt is exported again from the state, so it always
    belongs to the history this run continues. Returns the data generator's state."""
    sizes = [len(run.data.train), len(run.data.val), len(run.data.test)]
    if saved.get("classes") != run.data.classes or saved.get("data_sizes", sizes) != sizes:
        raise RunDirRefused(f"cannot resume {path}: it trained on other data ({len(saved.get('classes') or [])} "
                            f"classes, splits {saved.get('data_sizes')}) than data.root={run.cfg.data.root} holds "
                            f"({len(run.data.classes)} classes, splits {sizes}). Fix: point data.root at its data.")
    generator_state = run.state.load_state_dict(saved, run.device, run.dist)
    state = run.state
    log.info("resuming from %s: %s", path, f"epoch {state.epoch + 1}, batch {state.progress.batch}, step "
             f"{state.step}" if state.epoch < run.cfg.trainer.epochs
             else f"all {state.epoch} epochs are done, only the final test runs again")
    return generator_state


def adopt(ctx: RunContext, saved: dict, path: Path) -> None:
    """Continuing another run dir's checkpoint (trainer.resume=PATH): bring over its metrics up to that
    checkpoint, so that this run dir alone holds the whole record (the best weights are in the checkpoint)."""
    if path.resolve().parent == (ctx.run_dir / "checkpoints").resolve():
        return
    metrics = path.parent.parent / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().splitlines(keepends=True)[:saved.get("metrics_lines", 0)]
        (ctx.run_dir / "metrics.jsonl").write_text("".join(lines))


def free_bytes(device: torch.device) -> int:
    """Memory free for this run: the GPU's, or the host's (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg: Config, device: torch.device) -> None:
    """Refuse, before allocating anything, a config whose training step cannot fit the device (an estimate from
    the arch specs: model.width=16 or a 1024-pixel input would otherwise thrash, or fail deep in a step)."""
    m = cfg.model
    params, need = training_bytes(ARCHS[m.arch], m.input_size, m.width, 10, cfg.data.batch_size, m.input_channels,
                                  STATE_COPIES.get(cfg.optimizer.name, 2))
    free = free_bytes(device)
    if need > free:
        raise ConfigError(
            f"this run needs about {need / 2**30:.1f} GiB ({params:,} parameters with their gradients and "
            f"{cfg.optimizer.name} state, and a batch of {cfg.data.batch_size} images at {m.input_size}x"
            f"{m.input_size}), but {device} has {free / 2**30:.1f} GiB free. Fix: lower model.width ({m.width}), "
            f"model.input_size ({m.input_size}) or data.batch_size ({cfg.data.batch_size}).")


def set_up(cfg: Config, ctx: RunContext, dist: Dist, device: torch.device, config: dict) -> Run:
    """Data, model, optimizer and the rest, as `cfg` says; the state of a run that has not trained yet."""
    check_memory(cfg, device)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    performance.configure_backends(cfg.trainer, device)
    data = load_dataset(cfg.data)
    loaders = make_loaders(cfg, data, device, dist)
    model = model_from_config(cfg.model, num_classes=len(data.classes)).to(device)
    performance.set_memory_format(model, cfg.trainer)  # before the optimizer allocates state like it
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.data.batch_size, device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, len(loaders.train), cfg.trainer.epochs)
    precision = cfg.trainer.precision.value
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if dist.active and cfg.trainer.on_nonfinite.value == "skip" and not skips_on_device(cfg.trainer, optimizer,
                                                                                        scaler):
        raise ConfigError("trainer.on_nonfinite=skip under DDP needs a fused optimizer and no fp16 scaler: "
                          "otherwise each rank decides on its own loss, and a rank that skips leaves the others "
                          "waiting in the gradient all-reduce. Fix: optimizer.impl=auto (fused) with "
                          "trainer.precision=bf16 or fp32, or trainer.on_nonfinite=stop.")
    ema = WeightEMA(model, cfg.trainer.ema_decay) if cfg.trainer.ema_decay else None
    state = TrainState(model, optimizer, scheduler, scaler, config, precision, ema=ema)
    checkpoints = Checkpoints(ctx.run_dir / "checkpoints", cfg.trainer.save_checkpoints, dist.is_main)
    if checkpoints.writes:
        check_writable(checkpoints.folder, checkpoint_bytes(model, cfg.optimizer.name, ema is not None))
    # DDP averages gradients over ranks; its broadcast at wrap time makes every rank start from rank 0's weights.
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if dist.active else model
    train_model = performance.maybe_compile(wrapped, cfg.trainer)
    eval_model = performance.maybe_compile(state.evaluated, cfg.trainer) if dist.active or ema else train_model
    info = {"name": ctx.name(), "group": ctx.group(cfg.wandb.group), "project": cfg.wandb.project,
            "entity": cfg.wandb.entity, "overrides": list(ctx.overrides)}
    log.info("%s: %s parameters | data: %d train, %d val, %d test images, %d classes | lr %.4g at batch %d",
             cfg.model.arch, f"{count_parameters(model):,}", len(data.train), len(data.val), len(loaders.test_split),
             len(data.classes), optimizer.param_groups[0]["initial_lr"], cfg.data.batch_size)
    return Run(cfg, ctx, dist, device, data, loaders, state, train_model, eval_model, checkpoints, info)


def open_tracker(run: Run, saved: dict | None) -> Tracker | NullTracker:
    """The run's tracker; a resumed run continues its W&B run, its metrics.jsonl and its wall-clock time."""
    if not run.dist.is_main:
        return NullTracker()
    cfg, resumed = run.cfg, saved or {}
    config = {**run.state.config, "trainer": to_dict(cfg.trainer)}  # as it runs: `auto` switches resolved
    tracker = Tracker(run.ctx.run_dir, config, cfg.wandb.mode.value, cfg.wandb.project, cfg.wandb.entity,
                      run.info["group"], cfg.wandb.tags, run.info["name"], init_timeout=cfg.wandb.init_timeout,
                      resume_id=resumed.get("run", {}).get("wandb_run_id"), keep_lines=resumed.get("metrics_lines"),
                      runtime=resumed.get("run", {}).get("runtime", 0.0))
    run.info["wandb_run_id"] = tracker.run_id
    if cfg.wandb.watch:
        tracker.watch(run.state.model, cfg.wandb.watch_log_freq)
    return tracker


def save_last(run: Run, step: int, progress: EpochProgress) -> None:
    """Everything needed to continue as if nothing happened (a collective with DDP; rank 0 writes it)."""
    state = run.state
    state.step, state.progress = step, progress
    if not state.weights_finite():  # the same on every rank: DDP keeps the weights identical
        raise NonFiniteLoss(f"the weights hold NaN or infinite values at step {step} (epoch {state.epoch + 1}), "
                            f"so they are not checkpointed. {DIVERGENCE_FIX}.")
    payload = state.state_dict(run.loaders.train.generator_state(), run.device, run.dist)
    if run.dist.is_main:
        payload.update(metrics_lines=run.tracker.lines, classes=run.data.classes,
                       data_sizes=[len(run.data.train), len(run.data.val), len(run.data.test)],
                       run={**run.info, "runtime": run.tracker.runtime()})
        run.checkpoints.save_last(payload, f"epoch {state.epoch + 1}, batch {progress.batch}, step {step}"
                                  if progress.batch else f"the end of epoch {state.epoch}, step {step}")


def end_epoch(run: Run, train_stats: dict, val: dict, seconds: float) -> None:
    """Log the epoch and checkpoint it: last.pt always, best.pt if its finite val/acc is the best so far."""
    state, trainer = run.state, run.cfg.trainer
    finite = math.isfinite(val["loss"])
    if not finite and trainer.on_nonfinite.value == "stop":
        raise NonFiniteLoss(f"non-finite validation loss ({val['loss']}) after epoch {state.epoch + 1}: the "
                            f"weights no longer compute finite outputs. {DIVERGENCE_FIX}.")
    if not finite:
        log.warning("validation loss %s after epoch %d: this epoch cannot be the best checkpoint", val["loss"],
                    state.epoch + 1)
    improved = finite and (state.best_val_acc is None or val["acc"] > state.best_val_acc)
    state.epoch, state.progress = state.epoch + 1, EpochProgress()
    if improved:
        state.keep_as_best(val["acc"])
    state.trained_seconds += train_stats["train/time"]
    best = {} if state.best_val_acc is None else {"val/best_acc": state.best_val_acc}
    run.tracker.log({**train_stats, "val/loss": val["loss"], "val/acc": val["acc"], **best, "epoch": state.epoch,
                     "train/elapsed": state.trained_seconds, "epoch_time": seconds}, state.step)
    loss, acc = (train_stats.get(k) for k in ("train/loss_epoch", "train/acc"))  # absent if all were skipped
    log.info("epoch %d/%d | train loss %s acc %s | val%s loss %.4f acc %.4f | %.0f img/s | %.1fs", state.epoch,
             trainer.epochs, "n/a" if loss is None else f"{loss:.4f}", "n/a" if acc is None else f"{acc:.4f}",
             "" if state.ema is None else " (EMA)", val["loss"], val["acc"], train_stats["train/images_per_sec"],
             seconds)
    if run.checkpoints.enabled:
        save_last(run, state.step, state.progress)
    if improved:
        run.checkpoints.export_best(run)


def fit(run: Run, generator_state: torch.Tensor | None, signals: StopSignals) -> None:
    """The epoch loop: train, validate, log, checkpoint; until the last epoch, or a signal asks to stop."""
    state, trainer = run.state, run.cfg.trainer
    while state.epoch < trainer.epochs and not signals.requested():
        start = time.perf_counter()
        try:
            train_stats, state.step = train_one_epoch(
                run.train_model, run.loaders.train, state.optimizer, state.scheduler, state.scaler, run.device,
                trainer, state.epoch, state.step, state.progress, run.tracker.log, generator_state,
                (lambda step, progress: save_last(run, step, progress)) if trainer.save_checkpoints else None,
                signals.requested, run.dist, state.ema)
            generator_state = None  # only the first, resumed epoch continues a saved data order
            if train_stats is None:  # stopped by a signal, after a mid-epoch checkpoint
                break
            val = evaluate(run.eval_model, run.loaders.val, run.device, state.precision, run.dist,
                           trainer.tta_hflip)
            end_epoch(run, train_stats, val, time.perf_counter() - start)
        except NonFiniteLoss as e:  # say truthfully what is on disk
            with contextlib.suppress(Exception):
                run.checkpoints.writer.wait()
            raise NonFiniteLoss(f"{e} {run.checkpoints.describe_last_good()}") from None
    run.checkpoints.writer.wait()  # every checkpoint on disk (or its error raised) before anyone reads one


def how_to_resume(ctx: RunContext, resume: str) -> str:
    """The command that continues this run: a multirun needs its sweep dir named, or it would start a new one."""
    if ctx.sweep_dir:
        again = f"run the same command with hydra.sweep.dir={ctx.sweep_dir}"
        if ctx.command:
            kept = [a for a in shlex.split(ctx.command) if not a.startswith("hydra.sweep.dir=")]
            again += f": {shlex.join([*kept, f'hydra.sweep.dir={ctx.sweep_dir}'])}"
        return again
    if resume == "auto":
        return "run the same command again"
    return f"run the same command with trainer.resume=auto (it continues {ctx.run_dir})"


def interrupted(ctx: RunContext, resume: str, again: bool) -> str:
    """What a Ctrl-C that stopped the run at once left behind, and how to go on."""
    if not ctx.began:
        go_on = f"To go on with the sweep, {how_to_resume(ctx, resume)}." if ctx.sweep_dir else \
            "Run the same command again to start it."
        return f"interrupted (Ctrl-C) before training began: nothing was trained. {go_on}"
    stopped = 'stopped at once by a second Ctrl-C' if again else 'interrupted (Ctrl-C)'
    folder = ctx.run_dir / "checkpoints"
    if not any(folder.glob("last*.pt")):
        return (f"{stopped} before the run's first checkpoint: there is nothing to resume ({ctx.run_dir} keeps "
                f"the log of the steps it took). Run the same command again to start afresh in a new run dir.")
    return (f"{stopped}, without a new checkpoint: {folder} keeps the last one. To resume from it, "
            f"{how_to_resume(ctx, resume)}.")


def stop(run: Run, signals: StopSignals) -> None:
    """A signal asked the run to stop, after its checkpoint: say how to go on, and exit (or let submitit
    requeue the job)."""
    state, trainer = run.state, run.cfg.trainer
    where = (f"during the final test (all {state.epoch} epochs are checkpointed)" if state.epoch >= trainer.epochs
             else f"at epoch {state.epoch + 1}, step {state.step}")
    log.warning("stopped %s by a signal; %s", where, f"the checkpoint is {run.checkpoints.folder / 'last.pt'}: "
                f"{how_to_resume(run.ctx, trainer.resume)} to resume" if trainer.save_checkpoints else
                "checkpoints are off (trainer.save_checkpoints=false)")
    signals.stop()


def check_ranks_agree(run: Run) -> None:
    """A cheap check that DDP kept every rank's weights identical."""
    digests = run.dist.gather(digest(run.state.model.state_dict()))
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
    log.info("all %d ranks hold identical weights (sha256 %s)", run.dist.world_size, digests[0][:16])


def test(run: Run, signals: StopSignals) -> dict | None:
    """Score the best weights on the test split (rank 0); log and return the run's summary (None if a signal
    stopped it)."""
    state, cfg = run.state, run.cfg
    run.checkpoints.writer.wait()
    best = state.best_weights
    if best is None:
        raise NonFiniteLoss("no epoch ended with a finite validation loss, so there is no best checkpoint to test. "
                            f"{DIVERGENCE_FIX}, in a new run.")
    state.evaluated.load_state_dict(best)
    test = evaluate(run.eval_model, run.loaders.test, run.device, state.precision, hflip=cfg.trainer.tta_hflip,
                    should_stop=signals.requested)
    if test is None:
        return None
    images, total = len(run.loaders.test_split), len(run.data.test)
    log.info("test (best checkpoint%s, val acc %.4f): loss %.4f acc %.4f on %s",
             "" if state.ema is None else " of the weights' moving average", state.best_val_acc, test["loss"],
             test["acc"], f"all {total} images" if images == total else
             f"{images} of {total} images (a seeded random subset: trainer.limit_test_images)")
    run.tracker.log_test_results(test, run.data.classes, run.loaders.test_split.images, state.step,
                                 cfg.wandb.sample_predictions)
    # val/acc's summary is W&B's running max (define_metric): writing it here would clobber it.
    summary = {"test/acc": test["acc"], "test/loss": test["loss"], "test/images": images,
               "val/best_acc": state.best_val_acc, "train/elapsed": state.trained_seconds,
               "params": count_parameters(state.model), "epochs": state.epoch, "steps": state.step}
    run.tracker.summary(summary)
    log_model = cfg.wandb.log_model if cfg.wandb.log_model is not None else run.tracker.mode == "online"
    if log_model and run.checkpoints.writes:
        run.tracker.log_model(run.checkpoints.folder / "best.pt", {**summary, "config": state.config})
    return summary


@contextlib.contextmanager
def tracked(run: Run, saved: dict | None):
    """Open the run's tracker; however the run ends, its last write finishes and the W&B run is finished with
    the exit code (0, 128 + signal, or 1 for an error)."""
    run.tracker = open_tracker(run, saved)
    exit_code = 1
    try:
        yield run.tracker
        exit_code = 0
    except SystemExit as e:  # a signal's clean stop
        exit_code = e.code if isinstance(e.code, int) else 1
        raise
    except UserError:
        exit_code = 2  # as the command line will exit
        raise
    except KeyboardInterrupt:
        exit_code = INTERRUPTED
        raise
    finally:
        if exit_code != 0:  # let the last write finish, without masking the error on its way out
            with contextlib.suppress(Exception):
                run.checkpoints.writer.wait()
        run.tracker.finish(exit_code)


def train(cfg: Config, ctx: RunContext) -> dict:
    """Train the run `cfg` (typed, from `to_typed`) in `ctx.run_dir`; returns its summary (test/acc, ...)."""
    dist, device = distributed.setup(cfg.trainer.strategy.value, resolve_device(cfg.trainer.device.value))
    config = to_dict(cfg)  # as given, `auto` switches unresolved: the record, and what a resume compares
    cfg.trainer = performance.resolve(cfg.trainer, device)  # auto switches -> what they mean on this device
    scratch = ctx.run_dir if dist.rank > 0 else None  # Hydra's dir of a rank > 0 (rundir.choose_run_dir)
    ctx.run_dir = Path(dist.broadcast(str(ctx.run_dir)))  # rank 0's: one run dir
    flags = performance.backend_flags()
    try:
        if dist.is_main:
            rundir.lock(ctx.run_dir)  # before anything in it is read or written
        for note in ctx.notes:
            log.warning(note)
        log.info("config:\n%s", yaml.safe_dump(config, sort_keys=False), extra=FILE_ONLY)
        log.info("run dir: %s | device: %s%s | %s", ctx.run_dir, device,
                 f" | rank {dist.rank} of {dist.world_size} ({dist.backend})" if dist.active else "",
                 performance.describe(cfg.trainer, device))
        finished = rundir.finished_summary(ctx.run_dir, config) if cfg.trainer.resume == "auto" else None
        if finished is not None:  # the same command again: nothing to do, nothing touched
            log.info("this run finished already: test acc %s (%s)", finished.get("test/acc"), ctx.run_dir)
            return finished
        found = find_resume_point(cfg, ctx, config)
        run = set_up(cfg, ctx, dist, device, config)
        generator_state = resume(run, *found) if found else None
        if dist.is_main:  # every check passed: from here on the run dir is this run's
            if found:
                adopt(ctx, *found)
            rundir.write_record(ctx.run_dir, config, ctx.overrides, ctx.hydra_yaml)
            ctx.recorded = True
        with tracked(run, found and found[0]), StopSignals() as signals:
            if found:
                run.checkpoints.export_best(run)  # best.pt of the history this run continues
            ctx.began = True
            fit(run, generator_state, signals)
            if dist.active:
                check_ranks_agree(run)
            summary = test(run, signals) if dist.is_main and not signals.requested() else {}
            if signals.requested():
                stop(run, signals)
            return summary
    except KeyboardInterrupt as e:  # a Ctrl-C outside the training steps, or a second one within them
        raise StopNow(interrupted(ctx, cfg.trainer.resume, again=isinstance(e, StopNow))) from None
    finally:
        performance.restore_backend_flags(flags)
        distributed.teardown(dist)
        rundir.unlock(ctx.run_dir)
        if scratch is not None and scratch != ctx.run_dir and scratch.name.startswith("alexnet-rank"):
            shutil.rmtree(scratch, ignore_errors=True)  # only Hydra's log of this rank: rank 0 logs the run
