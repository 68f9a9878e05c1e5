"""An exponential moving average (EMA) of the model's weights, which validation and test then score.

The average follows torch's `get_ema_multi_avg_fn` (one foreach lerp over parameters and buffers per step) with
the warm-up of TensorFlow's ExponentialMovingAverage(num_updates=...): step n uses
min(decay, (1 + n) / (10 + n)), so the first steps' weights (random at step 0) fade out fast.
`torch.optim.swa_utils.AveragedModel` is not used as is: its `update_parameters` reads its step counter, a
tensor, on the host (`bool(self.n_averaged == 0)`) and copies it to the device every step; on a GPU that waits
for every queued kernel, which our loop otherwise avoids between log steps. Here the counter is a Python int.
"""
from __future__ import annotations

import copy

import torch


class WeightEMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)  # same device and memory format
        self.updates = 0

    def _tensors(self, model: torch.nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards `model`'s weights now (the raw model, a DDP or a compiled wrapper of it).
        Called after every optimizer step; a step that a fused optimizer skipped on the device (a non-finite
        gradient under on_nonfinite=skip) counts too, as deciding otherwise would need a host sync."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = [], []
        for a, c in zip(self._tensors(self.module), self._tensors(model), strict=True):
            if a.is_floating_point():
                averaged.append(a)
                current.append(c)
            else:  # counters (a batch norm's num_batches_tracked): the latest value
                a.copy_(c)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
