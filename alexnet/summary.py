"""`python -m alexnet.summary [overrides]`: the layer table of a configured model, in the seed's format.

The seed printed its network with torchsummary; torchinfo walks the layers here and this file only renders
rows the same way, so `model=alexnet` can be compared with the seed's table line by line.
"""
from __future__ import annotations

from alexnet.errors import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting(__name__)  # before the heavy imports below

import sys
from dataclasses import dataclass

import torch
import torchinfo
from torch import nn

from alexnet.config import compose, to_typed
from alexnet.errors import ConfigError
from alexnet.models import model_from_config


@dataclass
class LayerRow:
    name: str  # "Conv2d-1": type and 1-based index, as torchsummary numbers them
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int


def layer_rows(model: nn.Module, input_size: int) -> list[LayerRow]:
    """Leaf layers in execution order. Flatten is left out: the seed reshaped with `view`, not a layer."""
    stats = torchinfo.summary(model, input_size=(1, input_channels(model), input_size, input_size), verbose=0,
                              device=next(model.parameters()).device)
    leaves = [layer for layer in stats.summary_list if not layer.children and layer.class_name != "Flatten"]
    return [LayerRow(f"{layer.class_name}-{i}", tuple(layer.output_size[1:]), layer.num_params)
            for i, layer in enumerate(leaves, start=1)]


def render(model: nn.Module, input_size: int) -> str:
    rows = layer_rows(model, input_size)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mb = 4 / 1024**2  # float32 bytes, in MB, as torchsummary counts
    input_mb = input_channels(model) * input_size**2 * mb
    activations_mb = 2 * sum(_numel(r.shape) for r in rows) * mb  # forward + backward
    params_mb = total * mb
    line, double = "-" * 64, "=" * 64
    out = [line, f"{'Layer (type)':>20}  {'Output Shape':>25} {'Param #':>15}", double]
    out += [f"{r.name:>20}  {str([-1, *r.shape]):>25} {r.params:>15,}" for r in rows]
    out += [double, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", line,
            f"Input size (MB): {input_mb:.2f}", f"Forward/backward pass size (MB): {activations_mb:.2f}",
            f"Params size (MB): {params_mb:.2f}",
            f"Estimated Total Size (MB): {input_mb + activations_mb + params_mb:.2f}", line]
    return "\n".join(out)


def input_channels(model: nn.Module) -> int:
    """What the first conv takes: 3, or more with model.input_channels."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip())
        return
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        raise ConfigError(f"alexnet.summary takes overrides only (model=..., model.KEY=VALUE), not {flags[0]}. Fix: "
                          f"drop it; `python -m alexnet.run --cfg job` prints a whole config.")
    cfg = to_typed(compose(argv))
    # The table is of the network alone, so the class count is CIFAR-10's, as in the seed. Built on the meta
    # device: shapes and counts without memory (model.width=16 has 12 billion parameters).
    with torch.device("meta"):
        model = model_from_config(cfg.model, num_classes=10)
    print(f"model={cfg.model.arch} input_size={cfg.model.input_size} width={cfg.model.width} "
          f"lrn={cfg.model.lrn} final_relu={cfg.model.final_relu}"
          + (f" input_channels={cfg.model.input_channels}" if cfg.model.input_channels != 3 else ""))
    print(render(model, cfg.model.input_size))


if __name__ == "__main__":
    from alexnet.errors import contract

    with contract():
        main(sys.argv[1:])
