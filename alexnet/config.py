"""Typed config schema: one dataclass per config-group option, registered in Hydra's ConfigStore.

Every YAML file in conf/<group>/ extends one of these schemas (`/schema/<group>@_here_: <name>` in its
defaults list), so a typo'd key or a wrongly typed value fails while Hydra composes the config. Ranges are
checked in `__post_init__`, which runs when `to_typed` turns the composed DictConfig into these objects.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, List, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from alexnet.archs import ARCHS, min_input_size
from alexnet.errors import ConfigError, first_line


def shipped(name: str) -> Path:
    """conf/ or experiments/: inside the package in a wheel (setup.cfg ships them as alexnet/conf, ...), beside it
    in a checkout (editable installs and tests), where users edit them."""
    package = Path(__file__).resolve().parent
    return package / name if (package / name).is_dir() else package.parent / name


CONF_DIR = shipped("conf")
EXPERIMENTS_DIR = shipped("experiments")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}. Fix the override `{key}=...`.")


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(Enum):
    auto = "auto"  # bf16 on a GPU that supports it (fp16 on one that does not), fp32 on the CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Strategy(Enum):
    single = "single"  # one process, one device
    ddp = "ddp"  # DistributedDataParallel, one process per device, started by torchrun


class EvalWeights(Enum):
    average = "average"  # what the run's validation scored: the moving average when trainer.ema_decay kept one
    trained = "trained"  # the optimizer's own weights (of an averaging run, only last.pt holds them)


class OnNonFinite(Enum):
    stop = "stop"  # stop the run, keeping the last good checkpoint
    skip = "skip"  # skip the batch (costs one host sync per step) and count it


class OptimizerImpl(Enum):
    auto = "auto"  # fused where torch has fused kernels for the device (CUDA, CPU), else torch's default
    default = "default"  # torch's default: foreach on CUDA, for_loop on the CPU
    fused = "fused"  # one kernel for the whole update
    foreach = "foreach"  # a few kernels over lists of tensors
    for_loop = "for_loop"  # one parameter at a time (the reference implementation)


class LRScaling(Enum):
    none = "none"  # optimizer.lr as given, whatever the batch size
    linear = "linear"  # lr * batch_size / base_batch_size (Goyal et al. 2017; SGD)
    sqrt = "sqrt"  # lr * sqrt(batch_size / base_batch_size) (adaptive optimizers)


class WandbMode(Enum):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class ModelConfig:
    arch: str = MISSING  # a key of alexnet.models.ARCHS
    input_size: int = 224  # images are resized to input_size x input_size before the network
    dropout: float = 0.5
    lrn: bool = False  # Local Response Normalization after conv blocks 1 and 2 (Krizhevsky et al. 2012)
    width: float = 1.0  # channel multiplier; 1.0 = published widths
    final_relu: bool = False  # the seed's ReLU on the logits (a bug); true reproduces it
    # Input channels of the first conv: 3 (RGB), or 4 or 8 with the extra ones zero in the images and in the
    # weights (the same function), as tensor cores take channel counts in multiples of 4 or 8.
    input_channels: int = 3

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, "model.arch", self.arch, f"one of {sorted(ARCHS)}")
        _check(self.input_channels in (3, 4, 8), "model.input_channels", self.input_channels, "3, 4 or 8")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a float in [0, 1)")
        _check(0 < self.width <= 16, "model.width", self.width, "a channel multiplier in (0, 16]")
        _check(self.input_size <= 1024, "model.input_size", self.input_size, "at most 1024 (CIFAR-10 is 32x32)")
        smallest = min_input_size(ARCHS[self.arch])
        _check(self.input_size >= smallest, "model.input_size", self.input_size,
               f"{self.arch} needs inputs of at least {smallest}x{smallest}; use model.input_size>={smallest}")


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"
    batch_size: int = 128
    eval_batch_size: int = 500
    val_size: int = 5000  # held out of the training images for validation
    split_seed: int = 0  # fixes the train/val split, independent of the run's seed
    mean: List[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    std: List[float] = field(default_factory=lambda: [0.2470, 0.2435, 0.2616])
    random_crop: bool = True
    crop_padding: int = 4
    hflip: bool = True
    # the chance that a training image gets one rectangle set to the mean pixel (torchvision's RandomErasing after
    # Normalize, value 0: 2-33% of the image, aspect 0.3-3.3); 0 = off
    random_erasing: float = 0.0
    # the smallest share of the image a training crop keeps: torchvision's RandomResizedCrop(scale=(crop_scale, 1),
    # ratio=(3/4, 4/3)) after the padded crop and flip, resized back to the stored side; 1.0 = off
    crop_scale: float = 1.0

    @property
    def image_side(self) -> int:
        """The side of the stored images (CIFAR-10's 32; an image folder's image_size)."""
        return getattr(self, "image_size", 32)

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")
        _check(self.eval_batch_size >= 1, "data.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _check(self.val_size >= 1, "data.val_size", self.val_size, "an integer >= 1")
        _check(0 <= self.crop_padding <= self.image_side, "data.crop_padding", self.crop_padding,
               f"an integer from 0 to the image side ({self.image_side}): more pads with nothing but black")
        _check(0.0 <= self.random_erasing <= 1.0, "data.random_erasing", self.random_erasing,
               "a probability in [0, 1]")
        _check(0.0 < self.crop_scale <= 1.0, "data.crop_scale", self.crop_scale,
               "a share of the image in (0, 1]; 1.0 turns the resized crop off")
        _check(len(self.mean) == 3, "data.mean", self.mean, "three per-channel values (RGB)")
        _check(len(self.std) == 3 and min(self.std) > 0, "data.std", self.std, "three positive values (RGB)")


@dataclass
class CIFAR10Config(DataConfig):
    name: str = "cifar10"
    root: str = "data/cifar10"
    download: bool = True  # torchvision downloads (and checks) the archive when it is missing


@dataclass
class ImageFolderConfig(DataConfig):
    name: str = "imagefolder"
    root: str = "data/cifar10-jpeg"  # holds train/<class>/* and test/<class>/*
    image_size: int = 32  # decoded images are stored at this size; model.input_size resizes on the device
    cache_dir: Optional[str] = None  # decoded tensors go here; default ~/.cache/alexnet

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.image_size >= 1, "data.image_size", self.image_size, "an integer >= 1")


@dataclass
class SyntheticConfig(DataConfig):
    name: str = "synthetic"
    train_size: int = 5000  # before the validation split
    test_size: int = 1000
    noise: float = 0.5  # std of the Gaussian noise added to the class patterns (pixel range [0, 1])
    val_size: int = 500
    batch_size: int = 64  # 70 steps an epoch on its 4,500 training images
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.train_size > self.val_size, "data.train_size", self.train_size,
               f"more than data.val_size ({self.val_size})")
        _check(self.test_size >= 1, "data.test_size", self.test_size, "an integer >= 1")
        _check(self.noise >= 0, "data.noise", self.noise, "a float >= 0")


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 0.01  # at base_batch_size; see lr_scaling
    weight_decay: float = 0.0
    lr_scaling: LRScaling = LRScaling.none  # how lr follows data.batch_size away from base_batch_size
    base_batch_size: int = 128
    impl: OptimizerImpl = OptimizerImpl.auto

    def __post_init__(self) -> None:
        _check(0 < self.lr < math.inf, "optimizer.lr", self.lr, "a positive, finite learning rate")
        _check(0 <= self.weight_decay < math.inf, "optimizer.weight_decay", self.weight_decay, "a finite float >= 0")
        _check(self.base_batch_size >= 1, "optimizer.base_batch_size", self.base_batch_size, "an integer >= 1")


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.momentum < 1.0, "optimizer.momentum", self.momentum, "a float in [0, 1)")
        _check(not self.nesterov or self.momentum > 0, "optimizer.nesterov", self.nesterov,
               "nesterov needs optimizer.momentum > 0")


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas", self.betas,
               "two floats in [0, 1)")
        _check(0 < self.eps < math.inf, "optimizer.eps", self.eps, "a positive, finite float")


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.05


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, stepped every optimizer step; the base schedule, `none`, keeps the lr constant."""

    name: str = "none"
    warmup_epochs: float = 0.0  # linear warmup from ~0 to optimizer.lr over this many epochs

    def __post_init__(self) -> None:
        _check(0 <= self.warmup_epochs <= 10_000, "scheduler.warmup_epochs", self.warmup_epochs,
               "a number of epochs in [0, 10000]")


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    name: str = "step"
    step_epochs: int = 10  # multiply the lr by gamma every step_epochs epochs
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.step_epochs >= 1, "scheduler.step_epochs", self.step_epochs, "an integer >= 1")
        _check(0 < self.gamma <= 1, "scheduler.gamma", self.gamma, "a float in (0, 1]")


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    name: str = "cosine"
    min_lr_ratio: float = 0.0  # the lr at the end, as a fraction of optimizer.lr

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.min_lr_ratio <= 1, "scheduler.min_lr_ratio", self.min_lr_ratio, "a float in [0, 1]")


@dataclass
class TrainerConfig:
    epochs: int = 30
    device: Device = Device.auto  # auto: cuda when available, else cpu
    precision: Precision = Precision.auto  # bf16/fp16 run the forward pass under autocast; fp16 adds a grad scaler
    # The fast path (alexnet/performance.py; measured with `python -m alexnet.bench`).
    channels_last: bool = True  # NHWC weights and activations: what tensor cores and oneDNN's fastest convs take
    # torch.compile the model: false | default (or true) | reduce-overhead (CUDA graphs) | max-autotune. Faster
    # steps after a one-off warm-up (see README); each mode is one of torch.compile's.
    compile: str = "false"
    cudnn_benchmark: bool = True  # cuDNN times its conv algorithms once per shape (off when deterministic)
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls and convs on CUDA
    label_smoothing: float = 0.0
    tta_hflip: bool = False  # validation and test average the logits of each image and its mirror image
    # Validation, test and best.pt use an exponential moving average of the weights, updated every step with
    # this decay; null: the weights as trained (alexnet/ema.py). Step n uses min(decay, (1+n)/(10+n)): the
    # average spans about the last n/9 steps until the decay takes over (0.999: from step ~9,000 on, then about
    # the last 1,000 steps)
    ema_decay: Optional[float] = None
    limit_batches: Optional[int] = None  # cap on train and val batches per epoch, for quick checks (never the test)
    limit_test_images: Optional[int] = None  # score a seeded random subset of the test split (stated in the log)
    log_every_n_steps: int = 10
    save_checkpoints: bool = True  # checkpoints/last.pt every epoch, checkpoints/best.pt by val/acc
    checkpoint_every_n_steps: Optional[int] = 500  # also mid-epoch, so a kill loses at most this many steps
    resume: str = "auto"  # auto: continue this run's last checkpoint | never | PATH to a checkpoint
    deterministic: bool = False  # deterministic kernels: an interrupted and resumed run matches bit for bit
    on_nonfinite: OnNonFinite = OnNonFinite.stop  # a NaN or infinite loss: stop, or skip the batch
    grad_clip_norm: Optional[float] = None  # clip the gradients' global L2 norm to this
    strategy: Strategy = Strategy.single  # ddp: `torchrun --nproc_per_node=N -m alexnet.run trainer.strategy=ddp`
    # (NCCL on GPUs, gloo on the CPU)

    def __post_init__(self) -> None:
        self.compile = {"true": "default"}.get(str(self.compile).lower(), str(self.compile).lower())
        _check(self.compile in COMPILE_MODES, "trainer.compile", self.compile, ", ".join(COMPILE_MODES) + " (or true)")
        _check(self.epochs >= 1, "trainer.epochs", self.epochs, "an integer >= 1")
        _check(self.checkpoint_every_n_steps is None or self.checkpoint_every_n_steps >= 1,
               "trainer.checkpoint_every_n_steps", self.checkpoint_every_n_steps, "null or an integer >= 1")
        _check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "trainer.grad_clip_norm",
               self.grad_clip_norm, "null or a positive norm")
        _check(self.resume in ("auto", "never") or Path(self.resume).is_file(), "trainer.resume", self.resume,
               "auto, never, or the path of an existing checkpoint file")
        _check(self.limit_batches is None or self.limit_batches >= 1, "trainer.limit_batches",
               self.limit_batches, "null or an integer >= 1")
        _check(self.limit_test_images is None or self.limit_test_images >= 1, "trainer.limit_test_images",
               self.limit_test_images, "null (the whole test split) or an integer >= 1")
        _check(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", self.log_every_n_steps,
               "an integer >= 1")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "trainer.ema_decay", self.ema_decay,
               "null (off) or a decay in (0, 1), such as 0.999")
        _check(0 <= self.label_smoothing < 1, "trainer.label_smoothing", self.label_smoothing, "a float in [0, 1)")


COMPILE_MODES = ("false", "default", "reduce-overhead", "max-autotune")


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.auto  # auto: online when an API key is configured, else offline
    project: str = "alexnet"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the sweep (multirun dir) or experiment, so each study is one group
    tags: List[str] = field(default_factory=list)
    log_model: Optional[bool] = None  # best checkpoint as a model artifact; null: only when online
    watch: bool = False  # gradient and parameter histograms (wandb.watch)
    watch_log_freq: int = 100
    sample_predictions: int = 48  # rows of the test-prediction table logged at the end
    init_timeout: float = 60.0  # seconds to wait for the server before keeping the run offline

    def __post_init__(self) -> None:
        _check(self.watch_log_freq >= 1, "wandb.watch_log_freq", self.watch_log_freq, "an integer >= 1")
        _check(self.sample_predictions >= 0, "wandb.sample_predictions", self.sample_predictions, "an integer >= 0")
        _check(self.init_timeout > 0, "wandb.init_timeout", self.init_timeout, "a positive number of seconds")


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 0
    fail_fast: bool = False  # in a multirun, stop at the first failed job instead of running the rest

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32), as numpy's generator takes")


@dataclass
class EvaluateConfig(Config):
    ckpt: str = MISSING  # the checkpoint to score; its model (and, unless overridden, its data) config is used
    weights: EvalWeights = EvalWeights.average  # which weights of a run with trainer.ema_decay: average, trained


GROUP_SCHEMAS = {
    "model": {"default": ModelConfig},
    "data": {"cifar10": CIFAR10Config, "imagefolder": ImageFolderConfig, "synthetic": SyntheticConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig},
    "scheduler": {"none": SchedulerConfig, "step": StepSchedulerConfig, "cosine": CosineSchedulerConfig},
    "trainer": {"default": TrainerConfig},
}


def register_configs() -> None:
    """Store the schemas where conf/ YAML files find them (`/schema/<group>@_here_: <name>`), and the resolver
    that picks (and locks) the run dir, so that a repeated command continues its interrupted run."""
    def choose_run_dir(*args) -> str:  # imported when used: alexnet.rundir imports this module
        from alexnet.rundir import choose_run_dir

        return choose_run_dir(*args)

    OmegaConf.register_new_resolver("alexnet_run_dir", choose_run_dir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    register_experiments(cs)


def register_experiments(cs: ConfigStore) -> None:
    """experiments/NAME.yaml becomes `experiment=NAME`; experiments/GROUP/NAME.yaml a helper group GROUP.

    Both apply at the top level (package _global_), as an experiment overrides any part of the config.
    experiments/ stays the only copy: nothing of it is repeated under conf/.
    """
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")) + sorted(EXPERIMENTS_DIR.glob("*/*.yaml")):
        group = "experiment" if path.parent == EXPERIMENTS_DIR else path.parent.name
        cs.store(group=group, name=path.stem, node=OmegaConf.load(path), package="_global_")


def _unknown_keys(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, list[str]]]:
    """Keys a schema lacks. Hydra lets `+key=value` append to typed nodes; a typo there must not pass."""
    schema = OmegaConf.get_type(node)
    fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if fields is not None and key not in fields:
            yield f"{prefix}{key}", fields
        elif isinstance(node._get_node(key), DictConfig):
            yield from _unknown_keys(node[key], f"{prefix}{key}.")


def to_typed(cfg: DictConfig) -> Config:
    """Turn a composed config into schema objects, running every range check (raises ConfigError)."""
    for key, fields in _unknown_keys(cfg):
        raise ConfigError(f"unknown config key {key!r}: its node has only {', '.join(fields)}. "
                          f"Fix the spelling, or drop the override.")
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except InterpolationResolutionError as e:  # ${no.such.key}, ${model.dropout} in model.dropout, ...
        raise ConfigError(f"{e.full_key}: {first_line(e)}. Fix: interpolate an existing key (`key=${{other.key}}`), "
                          f"or give a value.") from e
    except Exception as e:  # OmegaConf's own errors: a missing mandatory value
        raise ConfigError(f"{first_line(e)} ({getattr(e, 'full_key', '') or 'the config'}). Fix: give it a value on "
                          f"the command line (`key=value`).") from e


def flatten(config: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys, `{"model.dropout": 0.5, ...}`; lists as tuples, so values can be hashed
    (reports group runs by them) and compared."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def to_dict(cfg: DictConfig | Config) -> dict:
    """Plain, resolved dict of a config, enums as strings: for W&B, checkpoints and logs."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def normalize_override(override: str) -> str:
    """`+experiment=NAME` (Hydra's usual spelling for an optional group) means `experiment=NAME`: the group is
    declared in conf/config.yaml, before `debug`, so that debug=smoke applies after an experiment."""
    return override[1:] if override.startswith("+experiment=") else override


def normalize_argv(argv: list[str]) -> list[str]:
    return [normalize_override(a) for a in argv]


def compose(overrides: list[str] = (), return_hydra_config: bool = False, config_name: str = "config") -> DictConfig:
    """The run config for these overrides, composed as `python -m alexnet.run` would (for tools and tests);
    config_name="evaluate" composes alexnet.evaluate's. Works inside a running Hydra app too (a sweep's end
    writes its report): that app's Hydra is set aside meanwhile."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    outer = get_gh_backup() if GlobalHydra.instance().is_initialized() else None
    if outer is not None:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=normalize_argv(list(overrides)),
                                 return_hydra_config=return_hydra_config)
    finally:
        if outer is not None:
            restore_gh_from_backup(outer)


register_configs()
