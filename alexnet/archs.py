"""The AlexNet variants as data: each `ArchSpec` lists the layers that `alexnet.models.build_model` builds.

Free of torch, so that configs (which check input sizes against these) compose and fail fast without it.
`alexnet` is the seed network; `alexnet_cifar` its 32x32 variant (see alexnet/models.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class ConvSpec:
    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    lrn: bool = False  # LRN after this block's ReLU, when the model asks for LRN
    pool: bool = False  # 3x3 stride-2 max pooling after this block


@dataclass(frozen=True)
class ArchSpec:
    convs: Tuple[ConvSpec, ...]
    hidden: int  # units in each of the two hidden fully connected layers
    default_input_size: int


ARCHS = {
    "alexnet": ArchSpec(
        convs=(
            ConvSpec(96, 11, stride=4, lrn=True, pool=True),
            ConvSpec(256, 5, padding=2, lrn=True, pool=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(384, 3, padding=1),
            ConvSpec(256, 3, padding=1, pool=True),
        ),
        hidden=4096,
        default_input_size=224,
    ),
    "alexnet_cifar": ArchSpec(
        convs=(
            ConvSpec(96, 3, padding=1, lrn=True, pool=True),
            ConvSpec(256, 5, padding=2, lrn=True, pool=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(384, 3, padding=1),
            ConvSpec(256, 3, padding=1, pool=True),
        ),
        hidden=2048,
        default_input_size=32,
    ),
}

POOL_KERNEL, POOL_STRIDE = 3, 2


def feature_map_size(spec: ArchSpec, input_size: int) -> int:
    """Side of the last feature map for a square input; < 1 means the input is too small."""
    size = input_size
    for conv in spec.convs:
        size = (size + 2 * conv.padding - conv.kernel) // conv.stride + 1
        if size < 1:
            return size
        if conv.pool:
            size = (size - POOL_KERNEL) // POOL_STRIDE + 1
            if size < 1:
                return size
    return size


def min_input_size(spec: ArchSpec) -> int:
    size = 1
    while feature_map_size(spec, size) < 1:
        size += 1
    return size


def scaled(channels: int, width: float) -> int:
    """A layer's channels at `model.width` (at least one)."""
    return max(1, round(channels * width))


def training_bytes(spec: ArchSpec, input_size: int, width: float, num_classes: int, batch_size: int,
                   input_channels: int = 3, optimizer_states: int = 1) -> tuple[int, int]:
    """(parameters, about the bytes a training step takes): fp32 weights, gradients, `optimizer_states` copies
    (SGD's momentum: 1, Adam's moments: 2) and the best weights, plus each layer's output for one batch, kept for
    the backward pass. Arithmetic on the specs, as `models.build_model` builds them: nothing is allocated."""
    params, outputs, side, channels = 0, 0, input_size, input_channels
    for conv in spec.convs:
        out = scaled(conv.channels, width)
        params += conv.kernel * conv.kernel * channels * out + out
        side = (side + 2 * conv.padding - conv.kernel) // conv.stride + 1
        outputs += 2 * out * side * side  # the conv's output and what the next layer keeps (ReLU, LRN)
        if conv.pool:
            side = (side - POOL_KERNEL) // POOL_STRIDE + 1
            outputs += out * side * side
        channels = out
    hidden, flat = scaled(spec.hidden, width), channels * side * side
    params += flat * hidden + hidden + hidden * hidden + hidden + hidden * num_classes + num_classes
    outputs += flat + 4 * hidden + num_classes
    return params, 4 * (params * (3 + optimizer_states) + batch_size * outputs)
