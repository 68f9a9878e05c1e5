"""AlexNet variants, built from data: an `ArchSpec` lists the layers, `build_model` turns one into a network.

`alexnet` is the seed network (224x224 input, 46,787,978 parameters with 10 classes). `alexnet_cifar` keeps
its 5-conv / 3-FC topology, its channel widths and its overlapping 3x3/2 max pooling, but with a 3x3 stride-1
first convolution so that 32x32 images keep enough resolution (feature maps 32 -> 15 -> 7 -> 3), and 2048-unit
fully connected layers since its last feature map has 2,304 values instead of 6,400.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.archs import ARCHS, POOL_KERNEL, POOL_STRIDE, ArchSpec, ConvSpec, feature_map_size, min_input_size, scaled

__all__ = ["ARCHS", "ArchSpec", "ConvSpec", "build_model", "count_parameters", "feature_map_size", "min_input_size",
           "model_from_config", "paper_lrn"]


# Krizhevsky et al. 2012, section 3.3.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


class LocalResponseNorm(nn.LocalResponseNorm):
    """torch's LocalResponseNorm (same arguments, same values) with the sum over the channel window taken as
    `size` shifted slices. torch's is built on avg_pool3d, whose CUDA backward has no deterministic
    implementation, so `model.lrn=true trainer.deterministic=true` would fail at the first backward on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"LocalResponseNorm here takes N x C x H x W input, not {x.dim()}-d")
        channels = x.shape[1]
        squares = F.pad(x.pow(2), (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))  # zero channels at both ends
        window = sum(squares[:, i:i + channels] for i in range(self.size))
        return x / (window * (self.alpha / self.size) + self.k).pow(self.beta)


def paper_lrn() -> LocalResponseNorm:
    """LRN exactly as in the paper: b = a / (k + alpha * sum_{5 neighbours} a^2)^beta.

    torch divides alpha by `size` (it averages the squares instead of summing them), so pass alpha * size.
    """
    return LocalResponseNorm(size=LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)



def build_model(arch: str, num_classes: int = 10, input_size: int | None = None, dropout: float = 0.5,
                lrn: bool = False, width: float = 1.0, final_relu: bool = False,
                input_channels: int = 3) -> nn.Sequential:
    """The network for one variant. Layer order follows the seed: Linear -> ReLU -> Dropout in the classifier.

    Two named stages, `features` (convs) and `classifier` (FC layers), so state_dict keys read
    `features.0.weight`, `classifier.1.weight`; still an nn.Sequential, run stage after stage.

    `input_channels` > 3: the first conv takes that many, with zero weights for all but RGB; the images come
    with as many zero channels (Loader's `channels`), so the function is the same, on tensor-core-friendly shapes.
    """
    spec = ARCHS[arch]
    input_size = input_size or spec.default_input_size
    side = feature_map_size(spec, input_size)
    if side < 1:
        raise ValueError(f"{arch} needs inputs of at least {min_input_size(spec)}, got {input_size}")

    features, in_channels = [], input_channels
    for conv in spec.convs:
        out_channels = scaled(conv.channels, width)
        layer = nn.Conv2d(in_channels, out_channels, conv.kernel, conv.stride, conv.padding)
        if not features and input_channels > 3:
            with torch.no_grad():  # the padding channels carry zeros: their weights stay zero (no gradient)
                layer.weight[:, 3:] = 0
        features += [layer, nn.ReLU(inplace=True)]
        if lrn and conv.lrn:
            features.append(paper_lrn())
        if conv.pool:
            features.append(nn.MaxPool2d(POOL_KERNEL, POOL_STRIDE))
        in_channels = out_channels

    hidden = scaled(spec.hidden, width)
    classifier = [
        nn.Flatten(),
        nn.Linear(in_channels * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    ]
    if final_relu:
        classifier.append(nn.ReLU(inplace=True))
    return nn.Sequential(OrderedDict(features=nn.Sequential(*features), classifier=nn.Sequential(*classifier)))


def model_from_config(model_cfg, num_classes: int) -> nn.Sequential:
    """Build from a `ModelConfig` (the `model` node)."""
    return build_model(model_cfg.arch, num_classes, model_cfg.input_size, model_cfg.dropout, model_cfg.lrn,
                       model_cfg.width, model_cfg.final_relu, model_cfg.input_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

